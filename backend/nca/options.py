"""Options a user may set, described once, on the dataclass fields that hold them.

`option(default, help, ge=..., le=...)` is a `dataclasses.field` carrying an `Option`: its bounds,
a one-line help and whether the HTTP API takes it. The job spec (`backend.nca.jobspec`) collects
every such field of `TrainConfig` and `TargetOptions`; the command line derives its flags and the
HTTP API its request model (`backend/api/schemas.py`) from that list, so a bound, a default or a
help text is written in one place. `check_bounds` enforces the bounds; the dataclasses call it in
their `__post_init__`, next to the rules that relate several fields.

Stdlib only: the core stays free of web libraries, the API turns these into pydantic fields.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

_KEY = "nca.option"


@dataclass(frozen=True)
class Option:
    help: str
    ge: float | None = None  # at least
    gt: float | None = None  # above
    le: float | None = None  # at most
    max_length: int | None = None  # for text
    api: bool = True  # False: the command line only; jobs from the HTTP API keep the default
    key: str | None = None  # its name among the job options, when not the field's own (TargetOptions.size)
    # The stored job-spec version that first has it (backend.nca.jobspec): a new option says the next
    # version, and specs stored before it get its default when read.
    since: int = 2


def option(default: Any, help: str, **details: Any) -> Any:
    """A dataclass field with a default and an `Option` (see the module docstring)."""
    return dataclasses.field(default=default, metadata={_KEY: Option(help, **details)})


def option_of(f: dataclasses.Field) -> Option | None:
    return f.metadata.get(_KEY)


def check_bounds(instance: Any, error: type[ValueError] = ValueError) -> None:
    """Raise `error` naming the first option of `instance` outside its bounds (None: unset, not checked)."""
    for f in dataclasses.fields(instance):
        meta, value = option_of(f), getattr(instance, f.name)
        if meta is None or value is None:
            continue
        name = meta.key or f.name
        if isinstance(value, float) and not math.isfinite(value):  # NaN passes every comparison below
            raise error(f"{name} must be a finite number")
        if meta.ge is not None and value < meta.ge:
            raise error(f"{name} must be at least {number_text(meta.ge)}")
        if meta.gt is not None and value <= meta.gt:
            raise error(f"{name} must be above {number_text(meta.gt)}")
        if meta.le is not None and value > meta.le:
            raise error(f"{name} must be at most {number_text(meta.le)}")
        if meta.max_length is not None and len(value) > meta.max_length:
            raise error(f"{name} must be at most {meta.max_length} characters")


def number_text(x: float) -> str:
    """A bound as people write it: 1000000, not 1e+06; 0.1, not 0.1000."""
    return str(int(x)) if float(x).is_integer() else str(x)
