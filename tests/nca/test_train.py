"""The training recipe: loss, gradient normalisation, pool and damage, determinism, control flow."""

import math

import pytest
import torch

from backend.nca.model import make_seed
from backend.nca.train import TrainConfig, Trainer, TrainingFailed, normalize_gradients


@pytest.fixture
def small_target() -> torch.Tensor:
    """An orange disc of radius 5 on a 16x16 grid."""
    ys, xs = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    disc = ((xs - 7.5) ** 2 + (ys - 7.5) ** 2 <= 25).float()
    return torch.tensor([0.9, 0.5, 0.1, 1.0])[:, None, None] * disc


def quick(**overrides) -> TrainConfig:
    values = dict(experiment="growing", iterations=20, batch_size=2, pool_size=16, min_steps=12, max_steps=18,
                  lr_decay_at=200, seed=0)
    values.update(overrides)
    return TrainConfig(**values)


def test_experiment_presets_and_overrides():
    assert (TrainConfig(experiment="growing").use_pool, TrainConfig(experiment="growing").damage_count) == (False, 0)
    assert (TrainConfig(experiment="persistent").use_pool, TrainConfig(experiment="persistent").damage_count) == (
        True, 0)
    cfg = TrainConfig()
    assert (cfg.experiment, cfg.use_pool, cfg.damage_count) == ("regenerating", True, 3)
    assert (cfg.iterations, cfg.batch_size, cfg.pool_size, cfg.min_steps, cfg.max_steps) == (8000, 8, 1024, 64, 96)
    assert TrainConfig(damage_count=1).damage_count == 1
    assert cfg.lr_at(1999) == 2e-3 and math.isclose(cfg.lr_at(2000), 2e-4)
    with pytest.raises(ValueError, match="experiment"):
        TrainConfig(experiment="dancing")
    with pytest.raises(ValueError, match="min_steps"):
        TrainConfig(min_steps=50, max_steps=50)
    with pytest.raises(ValueError, match="damage"):
        TrainConfig(experiment="growing", damage_count=2)


def test_loss_is_mean_squared_rgba_error_per_sample(small_target):
    trainer = Trainer(small_target, quick())
    x = torch.rand(3, 16, 16, 16)
    expected = torch.stack([((x[i, :4] - small_target) ** 2).mean() for i in range(3)])
    assert torch.allclose(trainer.loss_per_sample(x), expected)


def test_gradient_normalisation_gives_unit_norm_per_parameter():
    params = [torch.nn.Parameter(torch.zeros(5, 3)), torch.nn.Parameter(torch.zeros(7))]
    params[0].grad = torch.full((5, 3), 100.0)
    params[1].grad = torch.full((7,), 1e-6)
    normalize_gradients(params)
    assert math.isclose(params[0].grad.norm().item(), 1.0, rel_tol=1e-5)
    assert math.isclose(params[1].grad.norm().item(), 1.0, rel_tol=1e-2)  # tiny norm: + 1e-8 shows


def test_pool_batch_puts_seed_first_and_damages_the_best(small_target):
    trainer = Trainer(small_target, quick(experiment="regenerating", batch_size=6, damage_count=3))
    trainer.pool[:] = small_target.new_zeros(16, 16, 16)
    trainer.pool[:, :4] = small_target  # a perfect pool: every sample has loss 0 ...
    trainer.pool[:, 4:] = 1.0
    x, idx = trainer.sample_batch()
    assert x.shape == (6, 16, 16, 16) and len(set(idx.tolist())) == 6
    assert torch.equal(x[0], make_seed(16, 16)[0])  # the worst sample is replaced by the seed
    assert torch.equal(x[1:3], trainer.pool[idx[1:3]])  # the middle ones are untouched
    damaged = (x[3:, 3] == 0) & (trainer.pool[idx[3:], 3] > 0)
    assert damaged.flatten(1).any(1).all()  # the three best each lose a circle


def test_training_writes_outputs_back_into_the_pool(small_target):
    trainer = Trainer(small_target, quick(experiment="persistent", iterations=1))
    with torch.no_grad():
        trainer.model.hidden_to_update.bias[4] = 0.1  # the rule now changes live cells
    before = trainer.pool.clone()
    trainer.train_step()
    changed = (trainer.pool != before).flatten(1).any(1)
    assert changed.sum() == 2  # exactly the batch went back, updated


def test_short_run_reduces_loss_by_an_order_of_magnitude(small_target):
    losses = []
    ys, xs = torch.meshgrid(torch.arange(20.0), torch.arange(20.0), indexing="ij")
    disc = ((xs - 9.5) ** 2 + (ys - 9.5) ** 2 <= 30).float()
    target = torch.tensor([0.9, 0.5, 0.1, 1.0])[:, None, None] * disc
    config = quick(iterations=500, lr_decay_at=400, batch_size=4, min_steps=16, max_steps=24)
    Trainer(target, config).run(on_progress=lambda p: losses.append(p.loss))
    assert len(losses) == 500
    assert sum(losses[-20:]) / 20 < losses[0] / 10


def test_regenerating_recipe_trains(small_target):
    losses = []
    result = Trainer(small_target, quick(experiment="regenerating", iterations=60, batch_size=4)).run(
        on_progress=lambda p: losses.append(p.loss))
    assert result.status == "succeeded" and result.iteration == 60
    assert min(losses[-10:]) < losses[0]


def test_same_seed_same_run_on_cpu(small_target):
    a, b = (Trainer(small_target, quick(experiment="regenerating", batch_size=4)) for _ in range(2))
    ra, rb = a.run(), b.run()
    assert ra.loss == rb.loss
    for pa, pb in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(pa, pb)
    c = Trainer(small_target, quick(experiment="regenerating", batch_size=4, seed=1))
    assert c.run().loss != ra.loss


def test_progress_callback_cancel_and_checkpoints(small_target):
    seen, checkpoints = [], []
    result = Trainer(small_target, quick(iterations=30, checkpoint_every=4)).run(
        on_progress=seen.append, should_stop=lambda: len(seen) >= 10, on_checkpoint=checkpoints.append)
    assert result.status == "cancelled" and result.iteration == 10
    assert [p.iteration for p in seen] == list(range(1, 11))
    assert all(p.total == 30 and p.lr == 2e-3 and p.trained_seconds > 0 and p.iterations_per_second > 0 for p in seen)
    assert [c.info.iterations for c in checkpoints] == [4, 8, 10]  # periodic, then the final state


def test_the_optimizer_steps_with_the_decayed_lr_from_lr_decay_at_on(small_target):
    """Iterations 0..lr_decay_at-1 step with lr, later ones (also after a resume) with lr * lr_decay."""
    trainer = Trainer(small_target, quick(iterations=4, lr_decay_at=2))
    used = []
    for _ in range(4):
        trainer.train_step()
        used.append(trainer.optimizer.param_groups[0]["lr"])
    assert used[:2] == [2e-3, 2e-3] and all(math.isclose(lr, 2e-4) for lr in used[2:])
    resumed = Trainer(small_target, quick(iterations=6, lr_decay_at=2), resume=trainer.export())
    assert math.isclose(resumed.optimizer.param_groups[0]["lr"], 2e-4)


def test_resume_continues_iterations_with_model_and_optimizer(small_target):
    first = Trainer(small_target, quick(iterations=20))
    first.run(should_stop=lambda: first.iteration >= 8)
    saved = first.export()
    resumed = Trainer(small_target, quick(iterations=20), resume=saved)
    assert resumed.iteration == 8
    assert torch.equal(resumed.optimizer.state_dict()["state"][0]["exp_avg"],
                       first.optimizer.state_dict()["state"][0]["exp_avg"])
    iterations = []
    result = resumed.run(on_progress=lambda p: iterations.append(p.iteration))
    assert iterations[0] == 9 and result.iteration == 20 and result.model_file.info.iterations == 20


def test_collapse_and_explosion_are_reported(small_target):
    trainer = Trainer(small_target, quick())
    with torch.no_grad():
        trainer.model.hidden_to_update.bias[3] = -5.0  # every live cell drops its alpha: all die
    with pytest.raises(TrainingFailed, match="collapsed"):
        trainer.train_step()
    trainer = Trainer(small_target, quick())
    with torch.no_grad():
        trainer.model.hidden_to_update.bias[0] = float("nan")
    with pytest.raises(TrainingFailed, match="exploded"):
        trainer.train_step()


DETERMINISM_RUN = """
import hashlib, sys, torch
from backend.nca.train import TrainConfig, Trainer
torch.set_num_threads(int(sys.argv[1]))
t = torch.zeros(4, 20, 20)
t[:, 6:14, 5:15] = torch.tensor([0.2, 0.6, 0.9, 1.0])[:, None, None]
trainer = Trainer(t, TrainConfig(iterations=40, batch_size=4, pool_size=16, min_steps=12, max_steps=18, seed=5))
trainer.run()
print(hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in trainer.model.parameters())).hexdigest())
"""


def test_same_seed_same_weights_across_processes_and_thread_counts():
    import subprocess
    import sys

    from tests.helpers import REPO_ROOT

    digests = {subprocess.run([sys.executable, "-c", DETERMINISM_RUN, str(threads)], cwd=REPO_ROOT, check=True,
                              capture_output=True, text=True, timeout=240).stdout.strip() for threads in (1, 2, 2)}
    assert len(digests) == 1


def test_early_stop_finishes_when_the_loss_stops_improving_and_says_why(small_target):
    """A learning rate too small to learn anything: the loss stays flat, so the run ends `patience`
    iterations after its best, succeeded, with the reason in its result and its last progress."""
    seen, checkpoints = [], []
    trainer = Trainer(small_target, quick(iterations=200, lr=1e-12, early_stop_patience=5, checkpoint_every=100))
    result = trainer.run(on_progress=seen.append, on_checkpoint=checkpoints.append)
    assert (result.status, result.iteration) == ("succeeded", 6)  # best at 1, then 5 without 1% better
    assert "finished early at iteration 6" in result.finished_early and "early_stop_patience" in result.finished_early
    assert trainer.progress(finished_early=result.finished_early).finished_early == result.finished_early
    assert [c.info.iterations for c in checkpoints] == [6]  # the final state is kept as usual
    learning = Trainer(small_target, quick(iterations=12, early_stop_patience=5))
    assert learning.run().iteration == 12  # a learning run goes on (early stop is also off by default)
    assert TrainConfig().early_stop_patience is None


def test_init_starts_from_its_weights_and_keeps_adam_only_on_the_same_target(small_target):
    """Continue (the model file trained on this target): weights and Adam's moments; fork (another target):
    the weights alone. Either way the count starts at 0 and the file names where it started."""
    source = Trainer(small_target, quick(iterations=3))
    source.run()
    first = source.export()
    cont = Trainer(small_target, quick(), init=first, start_from="abc")
    assert cont.iteration == 0
    for key, value in first.model.state_dict().items():
        assert torch.equal(cont.model.state_dict()[key], value)
    assert cont._optimizer_state().keys() == first.optimizer_state.keys()
    assert all(torch.equal(cont._optimizer_state()[k], v) for k, v in first.optimizer_state.items())
    other = small_target.flip(-1).roll(3, -1)
    fork = Trainer(other, quick(), init=first, start_from="abc@3")
    assert fork._optimizer_state() == {}  # a new picture: a fresh optimizer
    assert torch.equal(fork.model.hidden_to_update.weight, first.model.hidden_to_update.weight)
    fork.run()
    assert fork.export().info.extra["start_from"] == "abc@3"
    assert fork.iteration == 20
