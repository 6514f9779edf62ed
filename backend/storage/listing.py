"""Cursor pages over the sorted-set indexes, so that no listing request reads every job.

A listing walks one or more *phases*, each a source of job ids in a fixed order (a sorted set read
newest first: the owner's jobs, every job, the gallery; or a short list: the jobs the caller's share
links open). A page is read in chunks until it has `limit` items or it has read `budget` index
entries (a search or a filter can skip most of what it reads), and it ends with a cursor: the phase
and the (score, id) of the last entry *read*, not of the last one kept. The next page starts strictly
after that position, found again by score (not by rank), so pages stay exact while jobs are created
(newer: they go before the cursor) or deleted (the position is a score, not an entry) between pages.

The cursor is opaque to clients: base64url JSON `[version, listing, phase, score, id]`. A cursor that
does not decode, or is another listing's, is `BadCursor` (the API's 422).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import redis

from .connection import text

CURSOR_VERSION = 1
SCAN_BUDGET = 2000  # index entries one page reads at most (a search, or a filter that skips most)
CHUNK = 250  # index entries read per round trip once the first chunk (limit + 1) did not fill the page

T = TypeVar("T")
Row = tuple[str, float]  # (job id, score)


class BadCursor(ValueError):
    """A cursor this listing did not make; the message says what to do."""


@dataclass(frozen=True)
class Cursor:
    """Where a listing continues: strictly after (`score`, `member`) in `phase` (member "": at its start)."""

    listing: str
    phase: str
    score: float
    member: str

    def encode(self) -> str:
        raw = json.dumps([CURSOR_VERSION, self.listing, self.phase, self.score, self.member], separators=(",", ":"))
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str, listing: str, phases: Sequence[str]) -> Cursor:
        """The cursor `token` names; BadCursor unless it is one this listing (with these phases) made."""
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            version, made_for, phase, score, member = json.loads(raw)
            score = float(score)
        except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
            raise BadCursor("cursor: not a cursor this server made; pass next_cursor from the previous page "
                            "as it came, or leave cursor out for the first page") from None
        if version != CURSOR_VERSION or made_for != listing or phase not in phases or not isinstance(member, str) \
                or not math.isfinite(score) or len(member) > 64:
            raise BadCursor(f"cursor: not a cursor of this listing ({listing}, as you); pass next_cursor from the "
                            f"previous page of the same request, or leave cursor out for the first page")
        return cls(listing, phase, score, member)


class Source(Protocol):
    """A phase's ids, in its order: the `count` rows strictly after `after` (None: from the start)."""

    def after(self, after: tuple[float, str] | None, count: int) -> list[Row]: ...


class IndexSource:
    """A sorted set read newest (highest score) first; ties by id, descending, as ZREVRANGE orders them."""

    def __init__(self, client: redis.Redis, key: str):
        self._client, self.key = client, key

    def after(self, after: tuple[float, str] | None, count: int) -> list[Row]:
        if after is None:
            return [(text(m), s) for m, s in self._client.zrevrange(self.key, 0, count - 1, withscores=True)]
        score, member = after
        rows: list[Row] = []
        offset = 0
        while len(rows) < count:  # skips the ties at `score` up to `member` (rare: scores are times)
            chunk = self._client.zrevrangebyscore(self.key, repr(score), "-inf", start=offset, num=count,
                                                  withscores=True)
            rows += [(m, s) for m, s in ((text(m), s) for m, s in chunk) if s < score or m < member]
            if len(chunk) < count:
                break
            offset += len(chunk)
        return rows[:count]

    def oldest_after(self, after: tuple[float, str] | None, count: int, ceiling: float) -> list[Row]:
        """Oldest first, up to score `ceiling`: the `count` rows strictly after `after` (a sweep's chunks)."""
        low, member = ("-inf", "") if after is None else (repr(after[0]), after[1])
        rows: list[Row] = []
        offset = 0
        while len(rows) < count:
            chunk = self._client.zrangebyscore(self.key, low, repr(ceiling), start=offset, num=count, withscores=True)
            rows += [(m, s) for m, s in ((text(m), s) for m, s in chunk) if after is None or s > after[0] or m > member]
            if len(chunk) < count:
                break
            offset += len(chunk)
        return rows[:count]

    def count(self) -> int:
        return int(self._client.zcard(self.key))

    def at(self, offset: int, count: int) -> list[Row]:
        """`count` rows from rank `offset` (offset paging, kept for older clients)."""
        return [(text(m), s) for m, s in self._client.zrevrange(self.key, offset, offset + count - 1,
                                                                 withscores=True)]


class ListSource:
    """A short list of ids (the caller's share links: at most 20), by id descending, all with score 0."""

    def __init__(self, ids: Sequence[str]):
        self.ids = sorted(set(ids), reverse=True)

    def after(self, after: tuple[float, str] | None, count: int) -> list[Row]:
        return [(i, 0.0) for i in self.ids if after is None or i < after[1]][:count]


@dataclass
class Page(Generic[T]):
    items: list[tuple[str, T]]  # (phase, what `keep` made of the row)
    next: Cursor | None  # None: the listing is at its end
    read: int  # index entries read


def scan(listing: str, phases: Sequence[tuple[str, Source]], start: Cursor | None, limit: int,
         keep: Callable[[str, list[str]], list[T | None]], budget: int | None = None) -> Page[T]:
    """Read the phases from `start` until `limit` rows are kept or `budget` rows are read.

    `keep(phase, ids)` says for a chunk what each row becomes on the page (None: left out), in one round
    trip of its own. The first chunk is `limit + 1` rows (an unfiltered page is then one read that also
    knows whether more follow), later ones CHUNK.
    """
    budget = SCAN_BUDGET if budget is None else budget
    names = [name for name, _ in phases]
    index = names.index(start.phase) if start else 0
    after = (start.score, start.member) if start and start.member else None  # "": the phase's start
    items: list[tuple[str, T]] = []
    read, want = 0, limit + 1
    while index < len(phases):
        phase, source = phases[index]
        count = min(want, budget - read)
        if count <= 0:  # the budget is spent: continue from the last row read
            return Page(items, Cursor(listing, phase, *after) if after else Cursor(listing, phase, 0.0, ""), read)
        rows = source.after(after, count)
        read += len(rows)
        kept = keep(phase, [job_id for job_id, _ in rows]) if rows else []
        for position, ((job_id, score), made) in enumerate(zip(rows, kept, strict=True)):
            after = (score, job_id)
            if made is None:
                continue
            items.append((phase, made))
            if len(items) == limit:
                last = position == len(rows) - 1 and len(rows) < count and index == len(phases) - 1
                return Page(items, None if last else Cursor(listing, phase, score, job_id), read)
        if len(rows) < count:  # this phase is done
            index, after = index + 1, None
        want = CHUNK
    return Page(items, None, read)


def matches(name: str | None, query: str) -> bool:
    """The search's test: the name contains the query, case-insensitively."""
    return query.casefold() in (name or "").casefold()
