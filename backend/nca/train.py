"""The authors' training recipe: sample pool, damage, gradient normalisation, Adam with a step lr.

Read top to bottom: `TrainConfig` holds every number, `Trainer.train_step` is one iteration of
the paper's loop, `Trainer.run` adds progress, cancellation and checkpoints around it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Literal

import torch

from . import fast
from .model import ALIVE_THRESHOLD, CHANNELS, FIRE_RATE, HIDDEN, NCA, damage_circles, make_seed, to_rgba
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
    checkpoint_every: int = option(500, "iterations between checkpoints", ge=1, le=1_000_000)
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
    iteration: int  # iterations completed, counting those before a resume
    total: int
    loss: float
    lr: float
    elapsed: float  # seconds in this run
    iterations_per_second: float


class TrainingFailed(RuntimeError):
    """The run collapsed (every cell died) or exploded (NaN); retrying with another seed may help."""


@dataclass
class TrainResult:
    status: Literal["succeeded", "cancelled"]
    iteration: int
    loss: float
    model_file: ModelFile


def normalize_gradients(parameters) -> None:
    """Divide each parameter's gradient by its own L2 norm (+1e-8), as the authors do before Adam."""
    with torch.no_grad():
        for p in parameters:
            if p.grad is not None:
                p.grad /= p.grad.norm() + 1e-8


class Trainer:
    def __init__(self, target: torch.Tensor, config: TrainConfig, device: str | torch.device = "cpu",
                 resume: ModelFile | None = None, name: str | None = None,
                 target_size: int | None = None, padding: int | None = None):
        self.config, self.device, self.name = config, torch.device(device), name
        self.target_size, self.padding = target_size, padding  # recorded in the model file
        self.target = target.to(self.device, torch.float32)  # (4, H, W)
        _, self.height, self.width = self.target.shape
        if resume is not None:
            self.model = resume.model.to(self.device)
            self.iteration = resume.info.iterations
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(config.seed)
                self.model = NCA(config.channels, config.hidden, config.fire_rate).to(self.device)
            self.iteration = 0
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr_at(self.iteration))
        if resume is not None and resume.optimizer_state:
            self._load_optimizer_state(resume.optimizer_state)
        # A resumed run draws fresh random numbers, so that it does not repeat its first part.
        self.generator = torch.Generator(self.device).manual_seed(config.seed + self.iteration)
        self.seed_state = make_seed(self.height, self.width, config.channels, device=self.device)[0]
        self.pool = self.seed_state.repeat(config.pool_size, 1, 1, 1) if config.use_pool else None
        self.last_loss = math.nan

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
            keep = damage_circles(cfg.damage_count, self.height, self.width, self.generator, self.device)
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
            group["lr"] = cfg.lr_at(self.iteration)
        x, idx = self.sample_batch()
        steps = self._rand_int(cfg.min_steps, cfg.max_steps)
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
        self.last_loss = loss.item()
        return self.last_loss

    def run(self, on_progress: Callable[[Progress], None] | None = None,
            should_stop: Callable[[], bool] | None = None,
            on_checkpoint: Callable[[ModelFile], None] | None = None) -> TrainResult:
        """Train up to `config.iterations`, checking `should_stop` between iterations."""
        cfg = self.config
        start, start_iteration = time.perf_counter(), self.iteration
        status: Literal["succeeded", "cancelled"] = "succeeded"
        while self.iteration < cfg.iterations:
            if should_stop is not None and should_stop():
                status = "cancelled"
                break
            loss = self.train_step()
            if on_progress is not None:
                elapsed = time.perf_counter() - start
                rate = (self.iteration - start_iteration) / elapsed if elapsed > 0 else 0.0
                on_progress(Progress(self.iteration, cfg.iterations, loss, cfg.lr_at(self.iteration - 1),
                                     elapsed, rate))
            if on_checkpoint is not None and self.iteration % cfg.checkpoint_every == 0 \
                    and self.iteration < cfg.iterations:
                on_checkpoint(self.export())
        model_file = self.export()
        if on_checkpoint is not None and self.iteration > start_iteration:
            on_checkpoint(model_file)
        return TrainResult(status, self.iteration, self.last_loss, model_file)

    def export(self) -> ModelFile:
        cfg = self.config
        info = ModelInfo(
            channels=cfg.channels, hidden=cfg.hidden, fire_rate=cfg.fire_rate,
            grid_height=self.height, grid_width=self.width,
            target_size=self.target_size, padding=self.padding,
            experiment=cfg.experiment, iterations=self.iteration, total_iterations=cfg.iterations,
            final_loss=None if math.isnan(self.last_loss) else self.last_loss, name=self.name,
            extra={"train_config": asdict(cfg)},
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
