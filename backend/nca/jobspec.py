"""A training job, typed: what to train (`TrainConfig`), on what (`TargetOptions`), under which name.

`JobSpec` is the one shape of a job's options. Its flat form, `options()`, maps each job option to
its value; a job option is a field made with `option(...)` (backend.nca.options) in `JobSpec`,
`TrainConfig` or `TargetOptions`, listed in `OPTIONS`. From that list the HTTP API derives its
request model, the command line its flags; the job store keeps `options()` as JSON with
`SPEC_VERSION` and reads it back with `from_stored`; the worker trains `spec.train` on a target
made with `spec.target`, as is. A spec is validated once, when it is built: the value types here,
the bounds and the rules between fields in the dataclasses' `__post_init__`.

Adding a job option touches: its field in TrainConfig, made with `option(..., since=<SPEC_VERSION + 1>)`,
and the trainer code that uses it (backend/nca/train.py); the API, the form, the CLI and the docs take it from here.
SPEC_VERSION follows (the highest `since`), and specs stored before it get the option's default.
"""

from __future__ import annotations

import math
import random
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from .options import Option, check_bounds, number_text, option, option_of
from .target import TargetOptions
from .train import BUDGET_RECIPE, TrainConfig, Trainer


class SpecError(ValueError):
    """Options that do not make a job spec: the message names the option and what to fix; `field` is that
    option's name when there is one (the API answers 422, the command line its usage error)."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class JobSpec:
    name: str = option("", "shown in lists", max_length=80)
    # Continue or fork: the job starts from this model's weights (a model id, `<job id>@<iteration>` or a shipped
    # `example-<name>`; on the command line a model file). Same target: "continue training"; a new image: a fork.
    start_from: str | None = option(None, "start from this model's weights (a model id, <job id>@<iteration> or "
                                          "example-<name>) instead of random ones", max_length=120, since=6)
    # The budget is train.iterations, or train.minutes (a time budget; the trainer plans the iterations).
    train: TrainConfig = field(default_factory=TrainConfig)
    target: TargetOptions = field(default_factory=TargetOptions)

    def __post_init__(self) -> None:
        check_bounds(self, SpecError)

    @classmethod
    def from_options(cls, values: Mapping[str, Any], complete: bool = False) -> JobSpec:
        """A spec from flat options. Unknown names are refused; missing ones take their defaults (with a time
        budget, `minutes`, those of BUDGET_RECIPE first), unless `complete` (a stored spec must name them
        all). Raises ValueError (SpecError, TargetError)."""
        unknown = sorted(set(values) - OPTION_NAMES)
        if unknown:
            raise SpecError(f"unknown option{_s(unknown)} {', '.join(unknown)}; the options are "
                            f"{', '.join(sorted(OPTION_NAMES))}")
        missing = sorted(OPTION_NAMES - set(values)) if complete else []
        if missing:
            raise SpecError(f"missing option{_s(missing)} {', '.join(missing)}")
        if values.get("minutes") is not None:
            values = {**BUDGET_RECIPE, **values}
        parts: dict[str, dict[str, Any]] = {"job": {}, "train": {}, "target": {}}
        for opt in OPTIONS:
            if opt.name in values:
                parts[opt.part][opt.attribute] = opt.typed(values[opt.name])
        return cls(**parts["job"], train=TrainConfig(**parts["train"]), target=TargetOptions(**parts["target"]))

    def options(self) -> dict[str, Any]:
        """The flat form: every job option and its value (as resolved: damage_count as the experiment says)."""
        holders = {"job": self, "train": self.train, "target": self.target}
        return {opt.name: getattr(holders[opt.part], opt.attribute) for opt in OPTIONS}

    @classmethod
    def from_stored(cls, options: Mapping[str, Any], version: int) -> JobSpec:
        """A spec as the job store keeps it (`options()` at `version`), migrated to this SPEC_VERSION first."""
        if not 1 <= version <= SPEC_VERSION:
            raise SpecError(f"job spec version {version} is not one this code reads (1 to {SPEC_VERSION})")
        values = dict(options)
        for older in range(version, SPEC_VERSION):
            values = _migrate(values, older)
        return cls.from_options(values, complete=True)

    def trainer(self, target: Any, device: Any = "cpu", resume: Any = None, speed: Any = None,
                init: Any = None) -> Trainer:
        """The job's trainer, given the spec whole: its recipe, its name and its target's geometry (recorded in
        the model file). `target` (4, H, W), `resume` a ModelFile, `speed` the device's (backend.nca.budget);
        `init` the ModelFile `start_from` names (its weights; its optimizer state too when it trained on
        this very target: a continued job), used when there is no `resume`."""
        if init is not None and resume is None:
            self.check_start(init.info)
        return Trainer(target, self.train, device, resume=resume, name=self.name, target_size=self.target.size,
                       padding=self.target.padding, speed=speed, init=init, start_from=self.start_from)

    def check_start(self, info: Any) -> None:
        """SpecError (start_from) when the model `start_from` names (its ModelInfo) has another shape."""
        theirs = {"channels": info.channels, "hidden": info.hidden}
        ours = {"channels": self.train.channels, "hidden": self.train.hidden}
        wrong = [f"{k} {theirs[k]} (this job: {ours[k]})" for k in theirs if int(theirs[k]) != ours[k]]
        if wrong:
            raise SpecError(f"start_from: the model {self.start_from or ''} has another shape: {', '.join(wrong)}; "
                            "start from a model of the same channels and hidden size", "start_from")

    def pool_megabytes(self) -> float:
        """Memory of the sample pool for a square image (the most it can be); 0 without a pool."""
        side = self.target.size + 2 * self.target.padding
        cfg = self.train
        return cfg.pool_size * cfg.channels * side * side * 4 / 2**20 if cfg.use_pool else 0.0


@dataclass(frozen=True)
class OptionField:
    """One job option: where it lives in a spec, its type, default and `Option` (bounds, help)."""

    name: str  # in the flat form, the HTTP API and (dashed) on the command line
    part: Literal["job", "train", "target"]  # JobSpec itself, JobSpec.train or JobSpec.target
    attribute: str  # the dataclass field it sets
    type: Any  # the resolved annotation: int, float, bool, str, a Literal, or one of them | None
    default: Any
    meta: Option

    @property
    def kinds(self) -> tuple[Any, ...]:
        """The types it takes, None left out: (int,), (float,), (bool,), (str,) or (Literal[...],)."""
        return tuple(k for k in _accepted(self.type) if k is not type(None))

    def typed(self, value: Any) -> Any:
        """`value` if it has this option's type (an int also passes as a float); else SpecError."""
        choices = _accepted(self.type)
        if value is None and type(None) in choices:
            return None
        for accepted in choices:
            if typing.get_origin(accepted) is Literal and value in typing.get_args(accepted):
                return value
            if accepted is float and type(value) in (int, float):
                return float(value)
            if accepted in (int, bool, str) and type(value) is accepted:  # True is not an int here
                return value
        raise SpecError(f"{self.name} must be {_describe(choices)}, not {value!r}")


def _accepted(annotation: Any) -> tuple[Any, ...]:
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    return typing.get_args(annotation) if union else (annotation,)


def _describe(choices: tuple[Any, ...]) -> str:
    words = {int: "an integer", float: "a number", bool: "true or false", str: "text", type(None): "null"}
    parts = [" or ".join(repr(a) for a in typing.get_args(c)) if typing.get_origin(c) is Literal else words[c]
             for c in choices]
    return " or ".join(parts)


def _s(names: list[str]) -> str:
    return "s" if len(names) > 1 else ""


def _collect(cls: type, part: Literal["job", "train", "target"]) -> list[OptionField]:
    hints = typing.get_type_hints(cls)
    return [OptionField(meta.key or f.name, part, f.name, hints[f.name], f.default, meta)
            for f in fields(cls) if (meta := option_of(f)) is not None]


OPTIONS: tuple[OptionField, ...] = (*_collect(JobSpec, "job"), *_collect(TrainConfig, "train"),
                                    *_collect(TargetOptions, "target"))
OPTION_NAMES = frozenset(opt.name for opt in OPTIONS)
DEFAULTS: dict[str, Any] = {opt.name: opt.default for opt in OPTIONS}  # damage_count None: the experiment's
# Of the stored form: the newest option's `since`. 1 was the untyped options dict stored before JobSpec
# existed; 2 the first typed one.
SPEC_VERSION = max(2, *(opt.meta.since for opt in OPTIONS))


def _migrate(values: dict[str, Any], version: int) -> dict[str, Any]:
    """A stored spec of `version`, as `version + 1` stores it."""
    if version == 1:  # the API's validated options, some of them null (the default) or absent
        return {**DEFAULTS, "key_background": False, **{k: v for k, v in values.items() if v is not None}}
    values = {**{opt.name: opt.default for opt in OPTIONS if opt.meta.since == version + 1}, **values}
    if version == 2 and "key_background" in values:  # 3: `background` (auto, cutout, key, keep) replaces it
        values["background"] = "key" if values.pop("key_background") else "keep"  # what it trained on then
    return values


def _bound(name: str, which: str = "le") -> Any:
    return getattr(next(opt for opt in OPTIONS if opt.name == name).meta, which)


@dataclass(frozen=True)
class Limits:
    """What a server allows and chooses for the requests it takes, passed in (the API builds it from its
    Settings); the defaults are the options' own bounds, what the command line allows."""

    max_iterations: int = _bound("iterations")  # also the cap of a time budget's plan
    max_minutes: float = _bound("minutes")
    max_pool_megabytes: float = math.inf
    checkpoint_every: int | None = None  # this server's default cadence; None: the option's default
    min_checkpoint_every: int = 1  # the server's floor: each checkpoint is ~200 KB written to its storage
    starter: str | None = None  # the model a time budget starts from where it helps (`starter_applies`); None: never


# Where the starter (models/starter.safetensors: scripts/make_examples.py --starter) is the default start of a job:
# a time budget, on a target of at least STARTER_MIN_SIZE cells, of the starter's shape (the default channels
# and hidden size). Measured in docs/benchmarks.md, "The starter"; the paper recipe (no budget) never uses it.
STARTER_MIN_SIZE = 24  # measured at 24 (2-minute budgets) and 40 cells (5 minutes): docs/benchmarks.md


def starter_applies(options: Mapping[str, Any]) -> bool:
    """Whether a request's options (a time budget, no start_from of its own) start from the server's starter."""
    return (options.get("minutes") is not None and options.get("start_from") is None
            and options.get("target_size", DEFAULTS["target_size"]) >= STARTER_MIN_SIZE
            and options.get("channels", DEFAULTS["channels"]) == DEFAULTS["channels"]
            and options.get("hidden", DEFAULTS["hidden"]) == DEFAULTS["hidden"])


def spec_from_request(values: Mapping[str, Any], limits: Limits = Limits(), default_name: str = "image",
                      seed: int | None = None) -> JobSpec:
    """The spec a request asks for, from the options it sets (typed: the API's request model or the command
    line's flags parsed them), with what the server chooses where it sets none; SpecError naming the field.

    One rule for every way in (API, form, command line): a time budget (`minutes`, at most
    `limits.max_minutes`) plans the iterations, so `iterations` too is refused, and the plan is capped at
    `limits.max_iterations`; options it leaves out follow BUDGET_RECIPE. Without one, `iterations` is at most
    that cap (left out: the default within it). Left out too: the seed (`seed`, or a random one, recorded in
    the job), the checkpoint cadence (the server's) and the name (`default_name`). `key_background=true`
    (older clients) means background=key. The sample pool must fit `limits.max_pool_megabytes`. A time budget
    without `start_from` starts from `limits.starter` where `starter_applies` (recorded as its start_from).
    """
    options = {name: value for name, value in values.items() if value is not None}
    if options.pop("key_background", False) and options.setdefault("background", "key") != "key":
        raise SpecError("key_background=true means background=key: send only background", "background")
    if limits.starter and starter_applies(options):
        options["start_from"] = limits.starter
    if "minutes" in options:
        if "iterations" in options:
            raise SpecError("send minutes or iterations, not both: with a time budget the iterations are planned "
                            "to fit it", "iterations")
        if options["minutes"] > limits.max_minutes:
            raise SpecError(f"minutes: at most {limits.max_minutes:g} minutes are allowed on this server", "minutes")
        options["iterations"] = limits.max_iterations  # the cap of the plan
    else:
        options.setdefault("iterations", min(DEFAULTS["iterations"], limits.max_iterations))
    options.setdefault("seed", random.randrange(2**31) if seed is None else seed)
    if limits.checkpoint_every is not None:
        options.setdefault("checkpoint_every", limits.checkpoint_every)
    if not str(options.get("name", "")).strip():  # a blank name would leave the job unnamed in lists
        options["name"] = default_name
    try:
        spec = JobSpec.from_options(options)
    except SpecError:
        raise
    except ValueError as exc:  # a rule between options (TrainConfig, TargetOptions): its message names one first
        first = str(exc).split(" ", 1)[0]
        raise SpecError(str(exc), first if first in OPTION_NAMES else None) from None
    if spec.train.checkpoint_every < limits.min_checkpoint_every:
        raise SpecError(f"checkpoint_every: at least {limits.min_checkpoint_every} iterations on this server (each "
                        "checkpoint is written to storage)", "checkpoint_every")
    if spec.train.iterations > limits.max_iterations:
        raise SpecError(f"iterations: at most {limits.max_iterations} iterations are allowed on this server",
                        "iterations")
    if (pool_mb := spec.pool_megabytes()) > limits.max_pool_megabytes:
        raise SpecError(f"the sample pool would need {pool_mb:,.0f} MB (at most {limits.max_pool_megabytes:,.0f} "
                        "MB): lower pool_size, target_size or padding", "pool_size")
    return spec


# Options the server fills in when a request leaves them out (spec_from_request), and what it puts there.
SERVER_CHOSEN = {"name": "the image file name", "seed": "a random seed, recorded in the job",
                 "checkpoint_every": "the server's (NCA_CHECKPOINT_EVERY), else {default}"}


def option_schema(limits: Limits = Limits()) -> list[dict[str, Any]]:
    """Every option a request may set, as the Train form builds its fields from it (GET /api/config):
    name, kind (integer, number, boolean, text or choice), choices, default (within this server's limits),
    bounds, help and, for one the server fills in, what it chooses."""
    out = []
    for opt in OPTIONS:
        if not opt.meta.api:
            continue
        kind = opt.kinds[0]
        entry: dict[str, Any] = {"name": opt.name, "kind": _KIND_NAMES.get(kind, "choice"), "help": opt.meta.help,
                                 "default": opt.default, "nullable": type(None) in _accepted(opt.type)}
        if typing.get_origin(kind) is Literal:
            entry["choices"] = list(typing.get_args(kind))
        bounds = {"min": opt.meta.ge, "above": opt.meta.gt, "max": opt.meta.le, "max_length": opt.meta.max_length}
        entry.update({k: v for k, v in bounds.items() if v is not None})
        if opt.name in SERVER_CHOSEN:  # no default to offer: the server chooses (the seed: a new one each time)
            entry["server_default"] = SERVER_CHOSEN[opt.name].format(default=opt.default)
            entry["default"] = None
        out.append(entry)
    by_name = {entry["name"]: entry for entry in out}
    by_name["iterations"]["max"] = limits.max_iterations
    by_name["iterations"]["default"] = min(DEFAULTS["iterations"], limits.max_iterations)
    by_name["minutes"]["max"] = min(by_name["minutes"]["max"], limits.max_minutes)
    by_name["checkpoint_every"]["default"] = limits.checkpoint_every or DEFAULTS["checkpoint_every"]
    by_name["checkpoint_every"]["min"] = max(by_name["checkpoint_every"].get("min", 1), limits.min_checkpoint_every)
    return out


_KIND_NAMES = {int: "integer", float: "number", bool: "boolean", str: "text"}


def markdown_option_table() -> str:
    """docs/api.md's table of the job options (tests/nca/test_jobspec.py checks the docs hold it)."""
    rows = ["| Option | Type | Default | Bounds | |", "|---|---|---|---|---|"]
    for entry in option_schema():
        kind = " \\| ".join(f"`{c}`" for c in entry["choices"]) if "choices" in entry else entry["kind"]
        default = entry.get("server_default") or ("none" if entry["default"] is None else f"`{entry['default']}`")
        low = f">= {number_text(entry['min'])}" if "min" in entry else f"> {number_text(entry['above'])}" \
            if "above" in entry else ""
        high = f"<= {number_text(entry['max'])}" if "max" in entry else f"at most {entry['max_length']} characters" \
            if "max_length" in entry else ""
        bounds = ", ".join(b for b in (low, high) if b)
        rows.append(f"| `{entry['name']}` | {kind} | {default} | {bounds} | {entry['help']} |")
    return "\n".join(rows)
