"""The authors' training recipe: sample pool, damage, gradient normalisation, Adam with a step lr.

Read top to bottom: `TrainConfig` holds every number, `Trainer.train_step` is one iteration of
the paper's loop, `Trainer.run` adds progress, cancellation and checkpoints around it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from typing import Literal

import torch

from . import fast
from .budget import GUESSED_SPEED, Plan, Schedule, Speed, live_cells, make_plan
from .model import (
    ALIVE_THRESHOLD,
    CHANNELS,
    FIRE_RATE,
    HIDDEN,
    NCA,
    damage_circles,
    damage_strokes,
    make_seed,
    to_rgba,
)
from .modelfile import ModelFile, ModelInfo
from .options import check_bounds, option

Experiment = Literal["growing", "persistent", "regenerating"]

# The article's three experiments: 1 always grows from the seed; 2 keeps a pool of states so the
# pattern learns to persist; 3 also damages the best samples so it learns to regenerate.
EXPERIMENTS: dict[str, dict[str, object]] = {
    "growing": {"use_pool": False, "damage_count": 0},
    "persistent": {"use_pool": True, "damage_count": 0},
    "regenerating": {"use_pool": True, "damage_count": 3},
}


# Named recipes: job options (backend.nca.jobspec) that differ from the defaults, which are the
# authors' (a 40-cell target with 16 cells of padding: a 72x72 grid for a square image).
# "preview" trades fidelity for time: a 24-cell target with 6 cells of padding (36x36 grid) and
# 32-48 steps per iteration shows a recognisable pattern within minutes on two CPU cores (curves and
# figures: docs/benchmarks.md).
PRESETS: dict[str, dict[str, object]] = {
    "paper": {},
    "preview": {"target_size": 24, "padding": 6, "iterations": 1500, "min_steps": 32, "max_steps": 48,
                "lr_decay_at": 1000},
}
# With a time budget (`minutes`), the options a job leaves out follow this recipe rather than the paper's:
# smaller batches (more updates per minute) and a small pool (its states are revisited, and learn to
# persist, within minutes); the schedule itself is planned by backend.nca.budget. With a budget,
# damage_count defaults to the paper's share of the batch (3 of 8). What each part buys:
# docs/benchmarks.md, "Time to a pattern".
BUDGET_RECIPE: dict[str, object] = {"batch_size": 4, "pool_size": 128}


@dataclass
class TrainConfig:
    """Every number of the recipe. Fields made with `option` are job options (bounds, help: backend.nca.options)."""

    experiment: Experiment = option("regenerating",
                                    "which of the article's experiments: 1 growing, 2 persistent, 3 regenerating")
    iterations: int = option(8000, "training iterations", ge=1, le=1_000_000)
    batch_size: int = option(8, "samples per iteration", ge=1, le=64)
    pool_size: int = option(1024, "sample pool (persistent, regenerating), at least batch_size", ge=1, le=4096)
    min_steps: int = option(64, "CA steps per iteration, at least", ge=1, le=256)  # uniform in [min, max)
    max_steps: int = option(96, "CA steps per iteration, below this", ge=2, le=512)
    lr: float = option(2e-3, "Adam learning rate", gt=0, le=0.1)
    lr_decay_at: int = option(2000, "iteration from which the learning rate drops by lr_decay (10x by default)", ge=0)
    lr_decay: float = option(0.1, "learning-rate factor from lr_decay_at on", gt=0, api=False)
    use_pool: bool | None = None  # None: as the experiment says
    damage_count: int | None = option(None, "samples damaged per iteration (default: as the experiment says)",
                                      ge=0, api=False)
    channels: int = option(CHANNELS, "state channels: RGBA and hidden ones", ge=4, api=False)
    hidden: int = option(HIDDEN, "width of the update network", ge=1, api=False)
    fire_rate: float = option(FIRE_RATE, "stochastic update rate", gt=0, le=1)
    seed: int = option(0, "random seed (weights, pool, steps, damage)", ge=0, le=2**31 - 1)
    checkpoint_every: int = option(100, "iterations between checkpoints", ge=1, le=1_000_000)
    # A time budget (backend.nca.budget): the trainer plans the iterations (iterations is then their cap),
    # the learning-rate drop and the steps per iteration to finish within it on the device that trains.
    minutes: float | None = option(None, "time budget in minutes: iterations, learning-rate drop and steps per "
                                         "iteration are planned to fit it (iterations is then a cap)",
                                   gt=0, le=7 * 24 * 60, since=4)
    early_stop_patience: int | None = option(None, "finish early when the loss (smoothed) has not improved by 1% "
                                                   "for this many iterations; off when unset",
                                             ge=1, le=1_000_000, since=5)
    damage: Literal["circle", "strokes"] = option(
        "circle", "how damaged samples are damaged: circle (the article's) or strokes (like a user's eraser swipes)",
        since=6)
    fast: bool = True  # rollouts through backend.nca.fast (same function, computed on the live box only)

    def __post_init__(self) -> None:
        if self.experiment not in EXPERIMENTS:
            raise ValueError(f"experiment must be one of {', '.join(EXPERIMENTS)}")
        check_bounds(self)
        preset = EXPERIMENTS[self.experiment]
        if self.use_pool is None:
            self.use_pool = bool(preset["use_pool"])
        damaged = f"damage_count is {self.damage_count}"
        if self.damage_count is None:
            self.damage_count = int(preset["damage_count"])  # type: ignore[arg-type]
            if self.minutes is not None and self.damage_count:  # the paper's share: 3 of 8
                self.damage_count = max(1, self.damage_count * self.batch_size // 8)
            damaged = f"the {self.experiment} experiment damages {self.damage_count} samples of each batch"
        checks = [
            (not self.use_pool or self.pool_size >= self.batch_size, "pool_size must be at least batch_size"),
            (self.min_steps < self.max_steps, "min_steps must be below max_steps"),
            (self.damage_count < self.batch_size, f"batch_size must be at least {self.damage_count + 1}: {damaged}"),
            (self.damage_count == 0 or self.use_pool, "damage needs the sample pool"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def lr_at(self, iteration: int) -> float:
        return self.lr * (self.lr_decay if iteration >= self.lr_decay_at else 1.0)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """A None value means "the default"; a name that is not a field is refused (a typo would go unnoticed)."""
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown training option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}")
        return cls(**{k: v for k, v in values.items() if v is not None})


@dataclass(frozen=True)
class Progress:
    """Where a run is: what the trainer reports, the worker passes on and the job store writes, as one record."""

    iteration: int  # iterations completed, counting those before a resume
    total: int
    loss: float | None  # of the last iteration; None before this run trained one
    iterations_per_second: float | None = None  # in this run; None where not measured (its start and end)
    plan: Plan | None = None  # with a time budget: the schedule as last re-planned (total is its iterations)
    trained_seconds: float = 0.0  # training time of the whole job, counting the runs before a resume
    finished_early: str | None = None  # why the run ended before `total`, when it did (early_stop_patience)
    lr: float | None = None  # the learning rate of the last iteration

    @property
    def eta_seconds(self) -> float | None:
        """Seconds left: the plan's with a time budget (it fits it), else at the measured rate."""
        if self.plan is not None:
            return max(self.plan.expected_seconds - self.trained_seconds, 0.0)
        if self.iterations_per_second:
            return max(self.total - self.iteration, 0) / self.iterations_per_second
        return None


class TrainingFailed(RuntimeError):
    """The run collapsed (every cell died) or exploded (NaN); retrying with another seed may help."""


@dataclass
class TrainResult:
    status: Literal["succeeded", "cancelled"]
    iteration: int
    loss: float
    model_file: ModelFile
    finished_early: str | None = None  # why it succeeded before its total (early_stop_patience)


def normalize_gradients(parameters) -> None:
    """Divide each parameter's gradient by its own L2 norm (+1e-8), as the authors do before Adam."""
    with torch.no_grad():
        for p in parameters:
            if p.grad is not None:
                p.grad /= p.grad.norm() + 1e-8


def same_target(theirs: torch.Tensor | None, ours: torch.Tensor) -> bool:
    """Whether a model file's target is this one: the test for "continue" (same target) over "fork"."""
    return theirs is not None and theirs.shape == ours.shape and torch.equal(theirs.to(ours.device, ours.dtype), ours)


class Trainer:
    def __init__(self, target: torch.Tensor, config: TrainConfig, device: str | torch.device = "cpu",
                 resume: ModelFile | None = None, name: str | None = None,
                 target_size: int | None = None, padding: int | None = None, speed: Speed | None = None,
                 init: ModelFile | None = None, start_from: str | None = None):
        """`speed`: the device's measured speed, for the first plan of a time budget (`config.minutes`);
        without it the first plan is a guess, re-planned after FIRST_REPLAN_ITERATIONS iterations.
        `init`: weights to start from instead of random ones (continue, fork), with its optimizer state only
        when it trained on this same target; `start_from` names it in the model file (lineage)."""
        self.config, self.device, self.name, self.start_from = config, torch.device(device), name, start_from
        self.target_size, self.padding = target_size, padding  # recorded in the model file
        self.target = target.to(self.device, torch.float32)  # (4, H, W)
        _, self.height, self.width = self.target.shape
        extra = resume.info.extra if resume is not None and isinstance(resume.info.extra, dict) else {}
        if resume is not None:
            self.model = resume.model.to(self.device)
            self.iteration = resume.info.iterations
        elif init is not None:
            self.model = NCA(config.channels, config.hidden, config.fire_rate).to(self.device)
            self.model.load_state_dict(init.model.state_dict())
            self.iteration = 0
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(config.seed)
                self.model = NCA(config.channels, config.hidden, config.fire_rate).to(self.device)
            self.iteration = 0
        self.trained_seconds = float(extra.get("trained_seconds", 0.0))  # wall time of the runs so far
        self.plan: Plan | None = None
        if config.minutes is not None:
            self.plan = self._first_plan(speed, extra.get("plan"))
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.lr_at(self.iteration))
        if resume is not None and resume.optimizer_state:
            self._load_optimizer_state(resume.optimizer_state)
        elif init is not None and init.optimizer_state and same_target(init.target, self.target):
            self._load_optimizer_state(init.optimizer_state)  # continue: Adam's moments as they were
        # A resumed run draws fresh random numbers, so that it does not repeat its first part.
        self.generator = torch.Generator(self.device).manual_seed(config.seed + self.iteration)
        self.seed_state = make_seed(self.height, self.width, config.channels, device=self.device)[0]
        self.pool = self.seed_state.repeat(config.pool_size, 1, 1, 1) if config.use_pool else None
        self.last_loss = math.nan
        self.steps = 0  # CA steps of the batches trained by this object, and samples x CA steps: what the
        self.sample_steps = 0  # speed is measured in

    @property
    def total(self) -> int:
        """Iterations in all: the plan's with a time budget, else the config's."""
        return self.plan.iterations if self.plan is not None else self.config.iterations

    def lr_at(self, iteration: int) -> float:
        if self.plan is None:
            return self.config.lr_at(iteration)
        return self.config.lr * (self.config.lr_decay if iteration >= self.plan.lr_decay_at else 1.0)

    def steps_at(self, iteration: int) -> tuple[int, int]:
        """[low, high) CA steps of an iteration."""
        return self.plan.steps_at(iteration) if self.plan is not None else (self.config.min_steps,
                                                                            self.config.max_steps)

    def live_cells(self) -> int:
        """Cells of a grown pattern's live box on this grid (backend.nca.budget): what the speed is per."""
        side = max(self.height, self.width)
        size = self.target_size or side
        padding = self.padding if self.padding is not None else max(0, (side - size) // 2)
        return min(live_cells(size, padding), self.height * self.width)

    def _first_plan(self, speed: Speed | None, stored: dict | None) -> Plan:
        cfg = self.config
        if stored is not None and self.iteration > 0:  # a resumed run goes on with its plan until it re-plans
            return Plan.from_dict(stored)
        rate = (speed or GUESSED_SPEED).sample_step_seconds(cfg.batch_size, self.live_cells())
        return make_plan(cfg, cfg.minutes * 60, rate, self.iteration, self.trained_seconds)

    def loss_per_sample(self, x: torch.Tensor) -> torch.Tensor:
        """Mean squared error of the RGBA channels against the target, one value per sample."""
        return (to_rgba(x) - self.target).pow(2).mean(dim=(1, 2, 3))

    def _rand_int(self, low: int, high: int) -> int:
        return int(torch.randint(low, high, (1,), generator=self.generator, device=self.device))

    def sample_batch(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        cfg = self.config
        if self.pool is None:
            return self.seed_state.repeat(cfg.batch_size, 1, 1, 1), None
        idx = torch.randperm(cfg.pool_size, generator=self.generator, device=self.device)[: cfg.batch_size]
        x = self.pool[idx]
        with torch.no_grad():
            order = self.loss_per_sample(x).argsort(descending=True)
        idx, x = idx[order], x[order]
        x[0] = self.seed_state  # the worst sample goes back to the seed
        if cfg.damage_count:
            shape = damage_strokes if cfg.damage == "strokes" else damage_circles
            keep = shape(cfg.damage_count, self.height, self.width, self.generator, self.device)
            x[-cfg.damage_count:] *= keep  # the best samples are damaged
        return x, idx

    def rollout(self, x: torch.Tensor, steps: int) -> torch.Tensor:
        if self.config.fast:
            return fast.rollout(self.model, x, steps, generator=self.generator)
        for _ in range(steps):
            x = self.model(x, generator=self.generator)
        return x

    def train_step(self) -> float:
        """One iteration of the paper's loop; returns the batch loss."""
        cfg = self.config
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.iteration)
        x, idx = self.sample_batch()
        steps = self._rand_int(*self.steps_at(self.iteration))
        x = self.rollout(x, steps)
        loss = self.loss_per_sample(x).mean()
        if not torch.isfinite(loss):
            raise TrainingFailed(f"training exploded at iteration {self.iteration + 1}: the loss is {loss.item()}; "
                                 "try a lower learning rate or another seed")
        if x[:, 3].max() <= ALIVE_THRESHOLD:
            raise TrainingFailed(f"training collapsed at iteration {self.iteration + 1}: every cell died; "
                                 "try another seed")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        normalize_gradients(self.model.parameters())
        self.optimizer.step()
        if self.pool is not None:
            self.pool[idx] = x.detach()
        self.iteration += 1
        self.steps += steps
        self.sample_steps += cfg.batch_size * steps
        self.last_loss = loss.item()
        return self.last_loss

    def progress(self, rate: float | None = None, finished_early: str | None = None) -> Progress:
        """Where training is now, as the worker writes it."""
        loss = None if math.isnan(self.last_loss) else self.last_loss
        return Progress(self.iteration, self.total, loss, rate, self.plan, self.trained_seconds, finished_early,
                        self.lr_at(max(self.iteration - 1, 0)))

    def run(self, on_progress: Callable[[Progress], None] | None = None,
            should_stop: Callable[[], bool] | None = None,
            on_checkpoint: Callable[[ModelFile], None] | None = None) -> TrainResult:
        """Train up to `total` iterations (or the time budget), checking `should_stop` between iterations;
        what is due when (re-plans, checkpoints, the end) is the Schedule's (backend.nca.budget)."""
        schedule = Schedule(self.config, self.iteration, self.trained_seconds, self.sample_steps, time.perf_counter())
        start_iteration = self.iteration
        while (end := self._due(schedule, should_stop)) is None:
            loss = self.train_step()
            now = time.perf_counter()
            self.trained_seconds = schedule.trained_seconds(now)
            schedule.observe(self.iteration, loss)
            if on_progress is not None:
                on_progress(self.progress(schedule.rate(self.iteration, now)))
            if on_checkpoint is not None and schedule.checkpoint_due(self.iteration, self.total):
                on_checkpoint(self.export())
        self.trained_seconds = schedule.trained_seconds(time.perf_counter())
        early = end if end not in ("succeeded", "cancelled") else None
        status: Literal["succeeded", "cancelled"] = "cancelled" if end == "cancelled" else "succeeded"
        if self.plan is not None and status == "succeeded" and self.iteration < self.plan.iterations:
            self.plan = replace(self.plan, iterations=self.iteration)  # the budget ran out first: as trained
        model_file = self.export()
        if on_checkpoint is not None and self.iteration > start_iteration:
            on_checkpoint(model_file)
        return TrainResult(status, self.iteration, self.last_loss, model_file, early)

    def _due(self, schedule: Schedule, should_stop: Callable[[], bool] | None) -> str | None:
        """Before an iteration: re-plan if due; None to go on, else how the run ends ("succeeded",
        "cancelled", or why it finishes early)."""
        now = time.perf_counter()
        self.trained_seconds = schedule.trained_seconds(now)
        if schedule.budget_spent(self.plan, self.trained_seconds):
            return "succeeded"
        if (rate := schedule.replan(self.plan, self.iteration, self.sample_steps, now)) is not None:
            self.plan = make_plan(self.config, self.plan.seconds, rate, self.iteration, self.trained_seconds, self.plan)
        if self.iteration >= self.total:
            return "succeeded"
        if (why := schedule.stalled(self.iteration)) is not None:
            return why
        if should_stop is not None and should_stop():
            return "cancelled"
        return None

    def export(self) -> ModelFile:
        cfg = self.config
        info = ModelInfo(
            channels=cfg.channels, hidden=cfg.hidden, fire_rate=cfg.fire_rate,
            grid_height=self.height, grid_width=self.width,
            target_size=self.target_size, padding=self.padding,
            experiment=cfg.experiment, iterations=self.iteration, total_iterations=self.total,
            final_loss=None if math.isnan(self.last_loss) else self.last_loss, name=self.name,
            extra={"train_config": asdict(cfg), "trained_seconds": round(self.trained_seconds, 3),
                   **({"plan": self.plan.as_dict()} if self.plan is not None else {}),
                   **({"start_from": self.start_from} if self.start_from else {})},
        )
        return ModelFile(self.model, info, self.target, self._optimizer_state())

    def _optimizer_state(self) -> dict[str, torch.Tensor]:
        flat: dict[str, torch.Tensor] = {}
        names = [n for n, _ in self.model.named_parameters()]  # optimizer state is keyed by index
        for index, state in self.optimizer.state_dict()["state"].items():
            for key, value in state.items():
                flat[f"{names[index]}.{key}"] = torch.as_tensor(value, dtype=torch.float32)
        return flat

    def _load_optimizer_state(self, flat: dict[str, torch.Tensor]) -> None:
        sd = self.optimizer.state_dict()
        for index, (name, _) in enumerate(self.model.named_parameters()):
            entry = {k.removeprefix(name + "."): v for k, v in flat.items() if k.startswith(name + ".")}
            if entry:
                entry["step"] = entry["step"].reshape(())
                sd["state"][index] = {k: v.to(self.device) if k != "step" else v for k, v in entry.items()}
        self.optimizer.load_state_dict(sd)


def calibrate(device: str | torch.device = "cpu", iterations: int = 3, steps: int = 16) -> Speed:
    """The device's training speed, from a few real iterations on two grids (about a second on a CPU): the
    paper's 72 x 72, whose cost is mostly per cell, and a small one, whose cost is mostly per step.

    The pool holds a grown disc, which the untrained rule keeps as it is: the live box of a grown pattern,
    as most of a training run computes on."""
    device = torch.device(device)
    big = _seconds_per_step(device, 40, 16, iterations, steps)
    small = _seconds_per_step(device, 8, 2, iterations, steps)
    batch = TrainConfig().batch_size
    cells_big, cells_small = live_cells(40, 16), live_cells(8, 2)
    per_cell = max((big - small) / (batch * (cells_big - cells_small)), 1e-12)
    per_step = max(big - batch * cells_big * per_cell, 0.0)
    return Speed(per_cell, per_step, str(device), "calibrated", time.time())


def _seconds_per_step(device: torch.device, target_size: int, padding: int, iterations: int, steps: int) -> float:
    """Seconds per CA step of a paper-sized batch on a grown disc of `target_size` cells."""
    side = target_size + 2 * padding
    ys, xs = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    disc = ((ys - side / 2 + 0.5) ** 2 + (xs - side / 2 + 0.5) ** 2 <= (target_size / 2) ** 2).float()
    config = TrainConfig(iterations=iterations + 1, min_steps=steps, max_steps=steps + 1, pool_size=8,
                         checkpoint_every=10**6)
    trainer = Trainer(torch.stack([disc * 0.5, disc * 0.3, disc * 0.2, disc]), config, device,
                      target_size=target_size, padding=padding)
    trainer.pool[:, 3:] = disc.to(device)  # alpha and hidden channels alive on the disc

    def timed() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    trainer.train_step()  # warm-up: allocations, first kernels
    start = timed()
    for _ in range(iterations):
        trainer.train_step()
    return (timed() - start) / (iterations * steps)
