"""Time budgets in the core: the plan for a given speed, re-planning, and a real budgeted run."""

from __future__ import annotations

import math
import time

import pytest
import torch

from backend.nca.budget import LR_DROP_SHARE, SHORT_SHARE, Speed, estimate, live_cells, make_plan, mean_steps
from backend.nca.jobspec import JobSpec
from backend.nca.train import PRESETS, TrainConfig, Trainer, calibrate

PAPER = TrainConfig()


def paper_seconds(sample_step_seconds: float) -> float:
    return PAPER.iterations * PAPER.batch_size * mean_steps(PAPER.min_steps, PAPER.max_steps) * sample_step_seconds


def test_a_fast_device_fits_the_whole_paper_recipe_a_slow_one_a_shorter_plan() -> None:
    budget = TrainConfig(minutes=20, iterations=20_000, batch_size=4, pool_size=128)
    fast_device = make_plan(budget, 20 * 60, sample_step_seconds=1e-6)  # ~a GPU: the cap is the limit
    assert fast_device.iterations == 20_000
    slow_device = make_plan(budget, 20 * 60, sample_step_seconds=5e-4)  # ~two CPU cores on a 40-cell pattern
    assert 100 < slow_device.iterations < 20_000
    assert slow_device.expected_seconds <= 20 * 60
    # one more iteration would not fit
    bigger = make_plan(TrainConfig(minutes=20, iterations=slow_device.iterations + 1, batch_size=4, pool_size=128),
                       20 * 60 * 10, 5e-4)
    assert bigger.expected_seconds > 20 * 60
    # milestones at their shares of the plan; the short phase runs half the steps
    assert slow_device.short_until == round(SHORT_SHARE * slow_device.iterations)
    assert slow_device.lr_decay_at == round(LR_DROP_SHARE * slow_device.iterations)
    assert slow_device.steps_at(0) == (32, 48) and slow_device.steps_at(slow_device.short_until) == (64, 96)


def test_a_replan_keeps_passed_milestones_and_moves_those_ahead() -> None:
    config = TrainConfig(minutes=10, iterations=20_000, batch_size=4, pool_size=128)
    first = make_plan(config, 600, 2e-4)
    # at 40% of the plan the device turns out twice as slow: fewer iterations, short phase already over
    done = int(0.4 * first.iterations)
    second = make_plan(config, 600, 4e-4, done=done, spent=240, previous=first)
    assert second.short_until == first.short_until  # passed: history
    assert second.lr_decay_at != first.lr_decay_at and second.lr_decay_at == round(LR_DROP_SHARE * second.iterations)
    assert second.iterations < first.iterations
    assert second.expected_seconds <= 600 + 1e-6
    # out of time: one more iteration at least, so a run always ends
    assert make_plan(config, 600, 4e-4, done=done, spent=700, previous=first).iterations == done + 1


def test_estimates_scale_with_the_speed_and_the_paper_recipe_is_iterations_times_an_iteration() -> None:
    speed = Speed(1e-7)
    paper = estimate(PAPER, 40, 16, speed)
    assert paper.plan is None and paper.iterations == 8000
    assert math.isclose(paper.seconds, paper_seconds(speed.sample_step_seconds(8, live_cells(40, 16))))
    budget = estimate(TrainConfig(minutes=5, iterations=20_000, batch_size=4, pool_size=128), 40, 16, speed)
    assert budget.plan is not None and budget.seconds <= 300 and budget.iterations > 0
    assert estimate(PAPER, 40, 16, Speed(2e-7)).seconds == pytest.approx(2 * paper.seconds)


def test_a_speed_is_refined_towards_what_a_run_measured() -> None:
    speed = Speed(1e-7, 1e-4)
    assert speed.refined(0.0, 100.0) == speed  # nothing measured
    long_run = speed.refined(600.0, 150.0)  # took 4x what it predicted
    assert long_run.source == "measured"
    assert long_run.cell_step_seconds == pytest.approx(2e-7) and long_run.step_seconds == pytest.approx(2e-4)
    short_run = speed.refined(6.0, 1.5)
    assert 1e-7 < short_run.cell_step_seconds < long_run.cell_step_seconds  # a short run moves it less
    assert Speed.from_dict(long_run.as_dict()) == long_run


def test_calibration_separates_the_cost_per_cell_from_the_cost_per_step() -> None:
    speed = calibrate("cpu", iterations=1, steps=4)
    assert speed.source == "calibrated" and 0 < speed.cell_step_seconds < 1e-3 and speed.step_seconds >= 0
    # the paper's grid costs more per sample-step than a small one
    assert speed.sample_step_seconds(8, live_cells(40, 16)) > speed.sample_step_seconds(8, live_cells(8, 2))


@pytest.mark.parametrize("value", [0, -1, float("nan"), float("inf"), 7 * 24 * 60 + 1])
def test_a_budget_out_of_range_is_refused_naming_the_option(value: float) -> None:
    with pytest.raises(ValueError, match="minutes"):
        JobSpec.from_options({"minutes": value})


def test_a_budget_follows_the_budget_recipe_for_options_left_out() -> None:
    spec = JobSpec.from_options({"minutes": 5})
    assert (spec.train.batch_size, spec.train.pool_size, spec.train.damage_count) == (4, 128, 1)
    given = JobSpec.from_options({"minutes": 5, "batch_size": 8, "pool_size": 1024})
    assert (given.train.batch_size, given.train.pool_size, given.train.damage_count) == (8, 1024, 3)
    paper = JobSpec.from_options({})  # no budget: the paper's numbers, unchanged
    assert (paper.train.batch_size, paper.train.pool_size, paper.train.damage_count) == (8, 1024, 3)


def disc_target(size: int, padding: int) -> torch.Tensor:
    side = size + 2 * padding
    ys, xs = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    disc = ((ys - side / 2 + 0.5) ** 2 + (xs - side / 2 + 0.5) ** 2 <= (size / 2) ** 2).float()
    return torch.stack([disc * 0.9, disc * 0.4, disc * 0.1, disc])


def test_a_budgeted_run_stops_at_its_budget_and_records_its_plan() -> None:
    spec = JobSpec.from_options({**PRESETS["preview"], "iterations": 20_000, "minutes": 0.1, "target_size": 12,
                                 "padding": 4, "min_steps": 8, "max_steps": 16})
    trainer = Trainer(disc_target(12, 4), spec.train, target_size=12, padding=4, speed=Speed(1e-9))
    assert trainer.plan is not None and trainer.plan.iterations == 20_000  # the guess: far too fast
    seen = []
    start = time.perf_counter()
    result = trainer.run(on_progress=seen.append)
    took = time.perf_counter() - start
    assert 6.0 <= took < 6.0 * 1.5  # stops at the budget (generous margin: timings belong in the benchmark)
    assert result.status == "succeeded" and result.iteration == trainer.total
    plan = result.model_file.info.extra["plan"]
    assert plan["iterations"] == result.iteration < 20_000  # re-planned from the measured speed
    assert plan["planned_at"] > 0 and result.model_file.info.total_iterations == result.iteration
    assert result.model_file.info.extra["trained_seconds"] == pytest.approx(took, abs=0.5)
    assert seen[-1].plan is not None and seen[-1].total >= result.iteration


def test_a_resumed_budget_counts_the_time_already_trained() -> None:
    spec = JobSpec.from_options({"minutes": 0.05, "iterations": 20_000, "target_size": 12, "padding": 4,
                                 "min_steps": 8, "max_steps": 16})
    first = Trainer(disc_target(12, 4), spec.train, target_size=12, padding=4)
    first.run(should_stop=lambda: first.iteration >= 3)  # stopped early, as a shutdown does
    checkpoint = first.export()
    assert checkpoint.info.extra["trained_seconds"] > 0
    resumed = Trainer(disc_target(12, 4), spec.train, resume=checkpoint, target_size=12, padding=4)
    assert resumed.trained_seconds == checkpoint.info.extra["trained_seconds"]
    assert resumed.plan is not None and resumed.plan.planned_at == checkpoint.info.extra["plan"]["planned_at"]
    start = time.perf_counter()
    resumed.run()
    assert time.perf_counter() - start < 3.0 + 1.5  # what was left of the 3 s, not 3 s more
