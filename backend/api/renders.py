"""Work the API computes from a model on request (videos, cards, exports), off the event loop, cached.

Results are keyed by what they are made of: the SHA-256 of the model file's bytes (so a new
checkpoint is a new key and an old result is never served for it) plus the request's parameters.
Computations run on a small thread pool of their own, never on the event loop and never on the
thread pool that FastAPI runs the other routes on, so a burst of video requests cannot stall
listing jobs. The same request arriving while it is being computed waits for that computation.

Behind the in-process LRU sits the artifact store (issue 21): a computed result is also written there, under
`<job id>/renders/<model SHA-256>/<kind>-<parameters' hash>` (an example's under `_examples/renders/...`), so
every API replica shares it and a restart keeps it. Under the job's prefix, deleting the job deletes its
renders; the orphan sweep removes those of model files the job no longer has (superseded checkpoints).
The store is a cache here: a result it cannot give (missing, damaged, unreachable) is computed again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi import HTTPException
from fastapi.concurrency import run_in_threadpool

from backend.nca.distill import QuantizationReport
from backend.nca.modelfile import ModelFile, ModelFileError, from_bytes
from backend.storage.artifacts import (
    EXAMPLE_RENDERS,
    RENDERS_FOLDER,
    ArtifactError,
    ArtifactMissing,
    ArtifactStore,
    sha256,
)
from backend.storage.jobs import is_job_id
from backend.storage.models import EXAMPLE_PREFIX, BadReference, ModelCatalog, parse_reference

log = logging.getLogger(__name__)

RENDER_THREADS = 2  # computations at once (each one uses torch's intra-op threads too)
MAX_WAITING = 16  # distinct computations queued beyond those running; more get 503
CACHE_ITEMS = 128
CACHE_BYTES = 64 * 1024 * 1024


model_digest = sha256  # a model file's name in the render cache: the artifact store's SHA-256 of its bytes


class Renders:
    """An LRU cache of computed results in front of a bounded thread pool. Used from the event loop only."""

    def __init__(self, threads: int = RENDER_THREADS, max_items: int = CACHE_ITEMS, max_bytes: int = CACHE_BYTES,
                 artifacts: ArtifactStore | None = None):
        """`artifacts`: the shared store behind the LRU (None: the LRU only)."""
        self.artifacts = artifacts
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
    key = render_key(model_id, kind, digest, params) if renders.artifacts is not None else None

    def stored_or_computed() -> Any:  # runs on the render pool: the store's I/O stays off the event loop
        if key is not None and renders.artifacts is not None:
            found = load_render(renders.artifacts, key, kind)
            if found is not None:
                return found
        value = compute(from_bytes(data))
        if key is not None and renders.artifacts is not None:
            save_render(renders.artifacts, key, kind, value)
        return value

    try:
        # The store key in the LRU's too: a job's render is kept under its own prefix even when another job
        # (or an example) has the very same model file, so deleting one never takes the other's.
        value = await renders.get((kind, digest, tuple(sorted(params.items())), key), stored_or_computed)
    except ModelFileError as exc:
        raise unreadable(model_id, exc) from None
    return value, digest


def render_key(model_id: str, kind: str, digest: str, params: dict[str, Any]) -> str | None:
    """Where a result lives in the artifact store: content-addressed (the model file's SHA-256 and the
    parameters), under its job's prefix; None for a model id that names neither a job nor an example."""
    try:
        owner, _ = parse_reference(model_id)
    except BadReference:
        return None
    if owner.startswith(EXAMPLE_PREFIX):
        base = EXAMPLE_RENDERS
    elif is_job_id(owner):
        base = owner
    else:
        return None
    options = hashlib.sha256(json.dumps(sorted(params.items()), separators=(",", ":")).encode()).hexdigest()[:16]
    return f"{base}/{RENDERS_FOLDER}/{digest}/{kind}-{options}"


def encode_render(kind: str, value: Any) -> bytes:
    """A result as bytes: a video as it is, the others as JSON (no pickle: the store is not trusted to run code)."""
    if kind == "video":
        return value
    if kind == "player":
        page, name = value
        return json.dumps({"page": page, "name": name}).encode()
    if kind == "distill":
        layers, report, name, experiment = value
        return json.dumps({"layers": layers, "report": report.as_dict(), "name": name,
                           "experiment": experiment}).encode()
    return json.dumps(value).encode()  # card: a JSON document already


def decode_render(kind: str, raw: bytes) -> Any:
    if kind == "video":
        return raw
    doc = json.loads(raw)
    if kind == "player":
        return doc["page"], doc["name"]
    if kind == "distill":
        return doc["layers"], QuantizationReport(**doc["report"]), doc["name"], doc["experiment"]
    return doc


def save_render(store: ArtifactStore, key: str, kind: str, value: Any) -> None:
    """Write a result with its SHA-256 in a one-line header (checked on read); best effort: a store that
    cannot take it costs the next replica a recomputation, never this request."""
    try:
        body = encode_render(kind, value)
        store.put(key, json.dumps({"sha256": sha256(body)}).encode() + b"\n" + body)
    except (ArtifactError, TypeError, ValueError) as exc:
        log.warning("render %s: not kept in the artifact store: %s", key, exc)


def load_render(store: ArtifactStore, key: str, kind: str) -> Any | None:
    """A stored result, or None when there is none usable (missing, damaged, store unreachable)."""
    try:
        raw = store.get(key)
    except ArtifactMissing:
        return None
    except ArtifactError as exc:
        log.warning("render %s: could not read it from the artifact store (%s); computing it again", key, exc)
        return None
    header, _, body = raw.partition(b"\n")
    try:
        if json.loads(header)["sha256"] != sha256(body):
            raise ValueError("its content does not match its checksum")
        return decode_render(kind, body)
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("render %s in the artifact store is damaged (%s); computing it again", key, exc)
        return None


async def stored_card(catalog: ModelCatalog, model_id: str, digest: str) -> dict | None:
    """A shipped example's stored card, if there is one and it is this model file's (same SHA-256)."""
    raw = await run_in_threadpool(catalog.get_stored_card, model_id)
    try:
        card = json.loads(raw) if raw is not None else None
    except ValueError:
        return None
    return card if isinstance(card, dict) and (card.get("model") or {}).get("sha256") == digest else None
