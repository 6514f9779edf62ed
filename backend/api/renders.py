"""Work the API computes from a model on request (videos, cards, exports), off the event loop, cached.

Results are keyed by what they are made of: the SHA-256 of the model file's bytes (so a new
checkpoint is a new key and an old result is never served for it) plus the request's parameters.
Computations run on a small thread pool of their own, never on the event loop and never on the
thread pool that FastAPI runs the other routes on, so a burst of video requests cannot stall
listing jobs. The same request arriving while it is being computed waits for that computation.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi import HTTPException
from fastapi.concurrency import run_in_threadpool

from backend.nca.modelfile import ModelFile, ModelFileError, from_bytes
from backend.storage.models import ModelCatalog

RENDER_THREADS = 2  # computations at once (each one uses torch's intra-op threads too)
MAX_WAITING = 16  # distinct computations queued beyond those running; more get 503
CACHE_ITEMS = 128
CACHE_BYTES = 64 * 1024 * 1024


def model_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Renders:
    """An LRU cache of computed results in front of a bounded thread pool. Used from the event loop only."""

    def __init__(self, threads: int = RENDER_THREADS, max_items: int = CACHE_ITEMS, max_bytes: int = CACHE_BYTES):
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="nca-render")
        self.threads = threads
        self.max_items, self.max_bytes = max_items, max_bytes
        self._cache: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._running: dict[Hashable, asyncio.Future] = {}

    async def get(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key][0]
        future = self._running.get(key)
        if future is None:
            if len(self._running) >= self.threads + MAX_WAITING:
                raise HTTPException(503, "the server is busy rendering other models; try again in a minute",
                                    headers={"Retry-After": "30"})
            future = asyncio.get_running_loop().run_in_executor(self.executor, compute)
            self._running[key] = future
            future.add_done_callback(lambda done: self._finished(key, done))
        return await asyncio.shield(future)  # a client that goes away does not cancel it for the others

    def _finished(self, key: Hashable, future: asyncio.Future) -> None:
        self._running.pop(key, None)
        if future.cancelled() or future.exception() is not None:
            return
        value = future.result()
        size = len(value) if isinstance(value, bytes | str) else 64 * 1024  # cards and reports: tens of kB
        if size > self.max_bytes:
            return
        self._cache[key] = (value, size)
        self._bytes += size
        while len(self._cache) > self.max_items or self._bytes > self.max_bytes:
            _, (_, dropped) = self._cache.popitem(last=False)
            self._bytes -= dropped

    def forget(self, digests: set[str] | list[str]) -> None:
        """Drop every cached result made from these model files (a deleted job's)."""
        for key in [k for k in self._cache if isinstance(k, tuple) and len(k) > 1 and k[1] in digests]:
            _, size = self._cache.pop(key)
            self._bytes -= size

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


def unreadable(model_id: str, exc: ModelFileError) -> HTTPException:
    return HTTPException(422, f"model {model_id[:80]!r} is stored but cannot be read ({exc}); "
                              "download its file to inspect it, or train it again")


async def computed(renders: Renders, model_id: str, kind: str, data: bytes, compute: Callable[[ModelFile], Any],
                   **params: Any) -> tuple[Any, str]:
    """`compute(model file)` of the model file `data`, cached per (kind, model digest, params).

    Returns (result, model digest); 422 when the bytes are not a readable model file.
    """
    digest = model_digest(data)
    try:
        value = await renders.get((kind, digest, tuple(sorted(params.items()))), lambda: compute(from_bytes(data)))
    except ModelFileError as exc:
        raise unreadable(model_id, exc) from None
    return value, digest


async def stored_card(catalog: ModelCatalog, model_id: str, digest: str) -> dict | None:
    """A shipped example's stored card, if there is one and it is this model file's (same SHA-256)."""
    raw = await run_in_threadpool(catalog.get_stored_card, model_id)
    try:
        card = json.loads(raw) if raw is not None else None
    except ValueError:
        return None
    return card if isinstance(card, dict) and (card.get("model") or {}).get("sha256") == digest else None
