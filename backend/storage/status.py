"""A job's status words, in one place: the record's type, the Lua scripts' terminal test and the API read them."""

from __future__ import annotations

from typing import Literal, get_args

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
STATUSES: tuple[str, ...] = get_args(JobStatus)
FINISHED = ("succeeded", "failed", "cancelled")
ACTIVE = tuple(s for s in STATUSES if s not in FINISHED)
