"""Time budgets: what a training iteration costs on a device, and a plan that fits in N minutes.

An iteration costs about batch x CA steps x the cells of the pattern's live box x the device's
seconds per cell-step, forward and backward (the fast path computes the live box only:
backend/nca/fast.py). A worker measures that rate when it starts (`backend.nca.train.calibrate`), refines it from
the jobs it trains (`Speed.refined`), and the API estimates a job's time from it (`estimate`).

With `minutes` set, the trainer follows a `Plan` instead of the fixed recipe: how many iterations
fit, when the learning rate drops, and until when the iterations run the short step range (the
pattern learns to grow first, then to persist). It re-plans from the speed it measures every
few percent of the budget, since the cost grows with the pattern, and stops at the budget
whatever the plan said. What each part of this recipe buys is measured in docs/benchmarks.md
("Time to a pattern").

`Schedule` answers, during a run, what is due now: a re-plan, a checkpoint, or the end (the budget
spent, the iterations done, or, with `early_stop_patience`, a loss that has stopped improving).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace

# The budget recipe (docs/benchmarks.md, "Time to a pattern"): the first SHORT_SHARE of the
# iterations run half the configured steps, and the learning rate drops (by lr_decay) for the
# last 1 - LR_DROP_SHARE of them.
SHORT_SHARE = 0.3
LR_DROP_SHARE = 0.6
REPLAN_SHARE = 0.05  # re-plan after every this much of the budget
FIRST_REPLAN_ITERATIONS = 10  # ... and once after this many iterations: the first measured speed
# Cells of the live pattern beyond the target's box: the growth front and its alive margin. A trained
# pattern's faint halo can reach further: the estimate ran 0.64-1.12x of what the paper recipe's last
# iterations took (docs/benchmarks.md, "Time to a pattern"), lowest for 40-cell targets.
HALO = 3
PAPER_MINUTES_LIMIT = 30.0  # slower than this, the form leads with a budget instead of the paper recipe


def live_cells(target_size: int, padding: int) -> int:
    """Cells of the live box of a grown square target: what one CA step of one sample computes on."""
    side = target_size + 2 * min(HALO, padding)
    return side * side


def mean_steps(low: int, high: int) -> float:
    """The mean of a step count drawn uniformly from [low, high)."""
    return (low + high - 1) / 2


@dataclass(frozen=True)
class Speed:
    """A device's training speed: seconds per (sample x CA step x live-box cell), forward and backward, plus
    a fixed cost per CA step (kernel launches, Python) that dominates on small grids."""

    cell_step_seconds: float
    step_seconds: float = 0.0
    device: str = "cpu"
    source: str = "calibrated"  # "calibrated" (measured at start), "measured" (refined from jobs) or "guess"
    measured_at: float = 0.0

    def sample_step_seconds(self, batch_size: int, cells: int) -> float:
        """One sample's share of one CA step of a batch on a pattern with `cells` live-box cells."""
        return self.step_seconds / batch_size + cells * self.cell_step_seconds

    def seconds(self, steps: int, sample_steps: int, cells: int) -> float:
        """What `steps` CA steps of batches holding `sample_steps` samples x steps in all should take."""
        return steps * self.step_seconds + sample_steps * cells * self.cell_step_seconds

    def refined(self, seconds: float, predicted: float) -> Speed:
        """This speed scaled towards what a training run took (`seconds`, where it predicted `predicted`),
        weighted by how long the run was: a minute or more moves it half way (in ratio)."""
        if seconds <= 0 or predicted <= 0:
            return self
        factor = (seconds / predicted) ** (0.5 * min(1.0, seconds / 60.0))
        return replace(self, cell_step_seconds=self.cell_step_seconds * factor, step_seconds=self.step_seconds * factor,
                       source="measured", measured_at=time.time())

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> Speed:
        return cls(float(raw["cell_step_seconds"]), float(raw.get("step_seconds", 0.0)), str(raw.get("device", "cpu")),
                   str(raw.get("source", "")), float(raw.get("measured_at", 0.0)))


# Until a device is measured: about what two cores of a 2020s x86 server do (docs/benchmarks.md).
GUESSED_SPEED = Speed(2.5e-7, 5e-4, "cpu", "guess")


@dataclass(frozen=True)
class Plan:
    """A training schedule that fits a time budget, as re-planned at `planned_at` (iterations done then)."""

    seconds: float  # the budget
    iterations: int  # in all, counting those done
    lr_decay_at: int  # the learning rate drops from this iteration on
    short_until: int  # iterations before this one run the short step range
    short_steps: tuple[int, int]  # [low, high) CA steps per iteration while short
    steps: tuple[int, int]  # then the configured range
    planned_at: int = 0
    sample_step_seconds: float = 0.0  # the speed it was planned with: seconds per sample and CA step
    expected_seconds: float = 0.0  # what the whole run takes at that speed: the budget, or less at the cap

    def steps_at(self, iteration: int) -> tuple[int, int]:
        return self.short_steps if iteration < self.short_until else self.steps

    def as_dict(self) -> dict:
        plan = asdict(self)
        plan["minutes"] = round(self.seconds / 60, 3)
        return plan

    @classmethod
    def from_dict(cls, raw: dict) -> Plan:
        """A plan as `as_dict` wrote it (in a model file's info, say)."""
        fields = {k: v for k, v in raw.items() if k in cls.__dataclass_fields__}
        return cls(**{**fields, "short_steps": tuple(fields["short_steps"]), "steps": tuple(fields["steps"])})


def short_range(low: int, high: int) -> tuple[int, int]:
    """Half the configured step range (at least 1 to 2 steps)."""
    short_low = max(1, low // 2)
    return short_low, max(short_low + 1, high // 2)


def make_plan(config, seconds: float, sample_step_seconds: float, done: int = 0, spent: float = 0.0,
              previous: Plan | None = None) -> Plan:
    """The most iterations whose cost fits in `seconds - spent` at `sample_step_seconds` per sample and CA
    step, with milestones at their shares of the total; milestones already passed stay where they were.
    `config` is the job's TrainConfig (its batch, step range, lr schedule and iteration cap)."""
    steps = (config.min_steps, config.max_steps)
    short = short_range(*steps)
    per_short = config.batch_size * mean_steps(*short) * sample_step_seconds
    per_full = config.batch_size * mean_steps(*steps) * sample_step_seconds
    remaining = max(0.0, seconds - spent)

    def milestones(total: int) -> tuple[int, int]:
        short_until = round(SHORT_SHARE * total)
        lr_decay_at = round(LR_DROP_SHARE * total)
        if previous is not None:  # a milestone passed is history; one ahead moves with the plan
            if done >= previous.short_until:
                short_until = previous.short_until
            if done >= previous.lr_decay_at:
                lr_decay_at = previous.lr_decay_at
        return max(short_until, 0), max(lr_decay_at, 0)

    def cost(total: int) -> float:
        n_short = max(0, min(total, milestones(total)[0]) - done)
        return n_short * per_short + max(0, total - done - n_short) * per_full

    low, high = done, config.iterations  # the cap: TrainConfig.iterations
    while low < high:  # the largest total whose remaining cost fits
        middle = (low + high + 1) // 2
        if cost(middle) <= remaining:
            low = middle
        else:
            high = middle - 1
    total = max(low, min(done + 1, config.iterations))  # one more at least, unless at the cap: a run always ends
    short_until, lr_decay_at = milestones(total)
    return Plan(seconds, total, lr_decay_at, short_until, short, steps, done, sample_step_seconds,
                round(spent + cost(total), 3))


@dataclass(frozen=True)
class Estimate:
    """How long a job takes on a device at a speed, and how many iterations that is."""

    seconds: float
    iterations: int
    iteration_seconds: float  # of a full-length iteration on the grown pattern
    plan: Plan | None  # with a time budget


def estimate(config, target_size: int, padding: int, speed: Speed) -> Estimate:
    """The expected training time of `config` on a square target of `target_size` with `padding`."""
    sample_step = speed.sample_step_seconds(config.batch_size, live_cells(target_size, padding))
    full = config.batch_size * mean_steps(config.min_steps, config.max_steps) * sample_step
    if config.minutes is not None:
        plan = make_plan(config, config.minutes * 60, sample_step)
        return Estimate(plan.expected_seconds, plan.iterations, full, plan)
    return Estimate(config.iterations * full, config.iterations, full, None)


# Early stop (TrainConfig.early_stop_patience): the loss is smoothed (an exponential mean over about
# EARLY_STOP_SMOOTHING iterations: one batch's loss is noisy) and counts as improved when it drops
# EARLY_STOP_MIN_DELTA below the best smoothed loss so far.
EARLY_STOP_SMOOTHING = 20
EARLY_STOP_MIN_DELTA = 0.01


class Schedule:
    """What is due at each point of a training run: a re-plan of the time budget, a checkpoint, or the end
    (the budget spent, the iterations done, the loss no longer improving). `Trainer.run` asks and acts.

    `config` is the job's TrainConfig; the run starts at `iteration` with `trained_seconds` spent by the
    runs before it, and `sample_steps` counted so far, at `now` (time.perf_counter())."""

    def __init__(self, config, iteration: int, trained_seconds: float, sample_steps: int, now: float):
        self.checkpoint_every, self.patience = config.checkpoint_every, config.early_stop_patience
        self.started, self.start_iteration, self.before = now, iteration, trained_seconds
        self.window = (now, sample_steps)  # since the last plan: time and samples x steps
        self.smoothed: float | None = None
        self.best, self.best_at = float("inf"), iteration

    def trained_seconds(self, now: float) -> float:
        """Training time of the whole job: the runs before this one and this one so far."""
        return self.before + now - self.started

    def rate(self, iteration: int, now: float) -> float:
        """Iterations per second in this run."""
        elapsed = now - self.started
        return (iteration - self.start_iteration) / elapsed if elapsed > 0 else 0.0

    def replan(self, plan: Plan | None, iteration: int, sample_steps: int, now: float) -> float | None:
        """The measured seconds per sample and CA step when the budget is due to be re-planned: every
        REPLAN_SHARE of it, once after FIRST_REPLAN_ITERATIONS, and when the plan is done early."""
        if plan is None or sample_steps <= self.window[1]:
            return None
        due = (now - self.window[0] >= REPLAN_SHARE * plan.seconds or iteration >= plan.iterations
               or iteration - self.start_iteration == FIRST_REPLAN_ITERATIONS)
        if not due:
            return None
        rate = (now - self.window[0]) / (sample_steps - self.window[1])
        self.window = (now, sample_steps)
        return rate

    @staticmethod
    def budget_spent(plan: Plan | None, trained_seconds: float) -> bool:
        return plan is not None and trained_seconds >= plan.seconds

    def checkpoint_due(self, iteration: int, total: int) -> bool:
        """A checkpoint every `checkpoint_every` iterations; the last one is the run's end, not this."""
        return iteration % self.checkpoint_every == 0 and iteration < total

    def observe(self, iteration: int, loss: float) -> None:
        """Follow the loss, for the early stop."""
        if self.patience is None:
            return
        weight = 2 / (EARLY_STOP_SMOOTHING + 1)
        self.smoothed = loss if self.smoothed is None else self.smoothed + weight * (loss - self.smoothed)
        if self.smoothed < self.best * (1 - EARLY_STOP_MIN_DELTA):
            self.best, self.best_at = self.smoothed, iteration

    def stalled(self, iteration: int) -> str | None:
        """Why the run should finish early (the loss has stopped improving), or None."""
        if self.patience is None or iteration - self.best_at < self.patience:
            return None
        return (f"finished early at iteration {iteration}: the loss had not improved by "
                f"{EARLY_STOP_MIN_DELTA:.0%} for {self.patience} iterations (best {self.best:.4g} at "
                f"iteration {self.best_at}; early_stop_patience)")
