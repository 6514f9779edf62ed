"""The fast paths compute the same function as the reference NCA (states and gradients).

Random non-zero states with live and dead regions, non-square grids, damage, rotation and the
same fire masks on both sides; float32 tolerance.
"""

from __future__ import annotations

import math

import pytest
import torch

from backend.nca import fast
from backend.nca.model import NCA, alive_mask, damage_circles, make_seed
from backend.nca.train import TrainConfig, Trainer


def random_model(seed: int = 0, channels: int = 16, hidden: int = 32) -> NCA:
    """A model whose last layer is not zero, so every step really changes the state."""
    torch.manual_seed(seed)
    model = NCA(channels, hidden)
    with torch.no_grad():
        model.hidden_to_update.weight.normal_(0.0, 0.05)
        model.hidden_to_update.bias.normal_(0.0, 0.02)
    return model


def random_state(batch: int, height: int, width: int, seed: int, channels: int = 16) -> torch.Tensor:
    """Random values in a blob of live cells (touching a grid edge in one sample), zero elsewhere,
    with a circle of damage in half the batch."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, channels, height, width, generator=g) * 2.0 - 0.5
    x[:, 3] = torch.rand(batch, height, width, generator=g)  # alpha: a mix of live and dead cells
    ys = torch.arange(height)[:, None]
    xs = torch.arange(width)[None, :]
    blob = ((ys - height / 2) / (height / 3)) ** 2 + ((xs - width / 2) / (width / 3)) ** 2 < 1.0
    x *= blob
    x[0, :, : height // 3, : width // 4] = torch.rand(channels, height // 3, width // 4, generator=g)  # at an edge
    x[batch // 2:] *= damage_circles(batch - batch // 2, height, width, g)
    return x


def reference_rollout(model: NCA, x: torch.Tensor, masks: list[torch.Tensor], angle: float) -> torch.Tensor:
    for mask in masks:
        x = model(x, angle, fire_mask=mask)
    return x


def fire_masks(x: torch.Tensor, steps: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    b, _, h, w = x.shape
    return [torch.rand(b, 1, h, w, generator=g) < 0.5 for _ in range(steps)]


def grads(model: NCA, x0: torch.Tensor, out: torch.Tensor) -> list[torch.Tensor]:
    weights = torch.linspace(0.5, 1.5, out.shape[1])[None, :, None, None]  # every channel matters
    loss = (out * weights).pow(2).mean()
    return list(torch.autograd.grad(loss, [x0, *model.parameters()]))


@pytest.mark.parametrize(("height", "width", "angle"), [(24, 24, 0.0), (20, 33, 0.7), (37, 18, math.pi / 2),
                                                        (9, 9, -1.1)])
def test_rollout_matches_reference_states_and_gradients(height: int, width: int, angle: float) -> None:
    model = random_model(seed=height)
    x0 = random_state(4, height, width, seed=width)
    assert alive_mask(x0).any() and not alive_mask(x0).all()
    masks = fire_masks(x0, 6, seed=1)

    x_ref = x0.clone().requires_grad_(True)
    ref = reference_rollout(model, x_ref, masks, angle)
    x_fast = x0.clone().requires_grad_(True)
    out = fast.rollout(model, x_fast, len(masks), angle, fire_masks=masks)

    assert out.shape == ref.shape
    assert ref.abs().max() > 0.1 and (ref == 0).any()  # a real, partly dead pattern
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for g_fast, g_ref in zip(grads(model, x_fast, out), grads(model, x_ref, ref), strict=True):
        assert g_ref.abs().max() > 0
        torch.testing.assert_close(g_fast, g_ref, rtol=1e-4, atol=1e-6)


def test_rollout_draws_fire_masks_like_the_reference() -> None:
    """With a shared generator seed, the fast path draws the same masks in the same order."""
    model = random_model(seed=3)
    x0 = random_state(3, 30, 26, seed=4)
    ref = x0
    g = torch.Generator().manual_seed(11)
    for _ in range(5):
        ref = model(ref, 0.3, generator=g)
    out = fast.rollout(model, x0, 5, 0.3, generator=torch.Generator().manual_seed(11))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_seed_growth_box_grows_to_the_grid_edge() -> None:
    """From one seed cell the live box must follow the pattern out to the grid's edges."""
    model = random_model(seed=5)
    with torch.no_grad():
        model.hidden_to_update.bias[3] = 0.3  # alpha grows everywhere it may
    x0 = make_seed(15, 21, batch=2)
    masks = fire_masks(x0, 14, seed=2)
    ref = reference_rollout(model, x0, masks, 0.0)
    out = fast.rollout(model, x0, len(masks), 0.0, fire_masks=masks)
    assert alive_mask(ref)[:, 0, 0].any() and alive_mask(ref)[:, 0, :, -1].any()  # reached the edges
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_dead_state_stays_zero() -> None:
    model = random_model(seed=6)
    x0 = torch.zeros(2, 16, 12, 10)
    assert fast.rollout(model, x0, 3).eq(0).all()
    assert fast.step_batch(model, x0, steps=2).eq(0).all()


@pytest.mark.parametrize("angle", [0.0, 2.0])
def test_step_batch_matches_reference_and_leaves_input_alone(angle: float) -> None:
    model = random_model(seed=7, hidden=128)
    x0 = random_state(6, 72, 72, seed=8)
    before = x0.clone()
    out = fast.step_batch(model, x0, angle, generator=torch.Generator().manual_seed(3), steps=4)
    ref = x0
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for _ in range(4):
            ref = model(ref, angle, generator=g)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(x0, before)
    assert not out.requires_grad and not out.is_inference()  # callers edit it in place (erase)


def test_trainer_fast_and_reference_paths_train_the_same() -> None:
    target = torch.zeros(4, 14, 12)
    target[:, 4:10, 3:9] = torch.tensor([0.8, 0.2, 0.1, 1.0])[:, None, None]
    common = {"experiment": "regenerating", "iterations": 3, "batch_size": 4, "pool_size": 8, "min_steps": 6,
              "max_steps": 9, "hidden": 32, "damage_count": 1, "seed": 3}
    losses = {}
    for use_fast in (True, False):
        trainer = Trainer(target, TrainConfig(**common, fast=use_fast))
        losses[use_fast] = [trainer.train_step() for _ in range(3)]
        params = [p.detach().clone() for p in trainer.model.parameters()]
        losses[f"params-{use_fast}"] = params
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)
    for a, b in zip(losses["params-True"], losses["params-False"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_cells_two_away_from_life_still_count_for_the_alive_test() -> None:
    """A live cell that dies while a cell two steps away turns alive: the cells between them keep
    their update only because of that far cell, so the fast path must compute it too."""
    model = NCA(16, 8)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.perceive_to_hidden.weight[0, 3 * 3] = 1.0  # hidden 0 = relu(own alpha)
        model.hidden_to_update.weight[3, 0] = -2.0  # high alpha falls below the threshold...
        model.hidden_to_update.bias[3] = 0.3  # ...empty cells rise above it
        model.hidden_to_update.bias[0] = 0.1  # and carry some colour
    g = torch.Generator().manual_seed(9)
    x0 = torch.rand(4, 16, 20, 20, generator=g)  # hidden channels everywhere: cells that do not fire keep them
    x0[:, 3] = (torch.rand(4, 20, 20, generator=g) < 0.05) * 0.5  # sparse isolated live cells
    masks = fire_masks(x0, 1, seed=4)  # one step: later ones may erase the difference again
    ref = reference_rollout(model, x0, masks, 0.0)
    out = fast.rollout(model, x0, len(masks), 0.0, fire_masks=masks)
    assert ref.abs().sum() > 0
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
