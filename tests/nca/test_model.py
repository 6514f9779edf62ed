"""The CA rule pinned to the spec: filters, rotation, masks, fire rate, seed."""

import math

import torch

from backend.nca.fast import grow
from backend.nca.model import (
    NCA,
    alive_mask,
    damage_circles,
    damage_strokes,
    depthwise_filters,
    erase_circle,
    make_seed,
    perception_kernels,
    to_rgb,
)

SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0


def test_filters_values_and_channel_major_order():
    k = perception_kernels(0.0)
    identity = torch.zeros(3, 3)
    identity[1, 1] = 1.0
    assert torch.equal(k[0], identity)
    assert torch.allclose(k[1], SOBEL_X)
    assert torch.allclose(k[2], SOBEL_X.T)
    w = depthwise_filters(16)
    assert w.shape == (48, 1, 3, 3)
    for c in range(16):  # output c*3 + k is filter k on channel c
        for f in range(3):
            assert torch.equal(w[c * 3 + f, 0], k[f])


def test_perception_of_a_ramp_gives_unit_gradient_along_x():
    model = NCA()
    x = torch.zeros(1, 16, 5, 5)
    x[0, 2] = torch.arange(5.0)[None, :]  # channel 2 rises by 1 per cell to the right
    p = model.perceive(x)
    assert torch.equal(p[0, 2 * 3 + 0], x[0, 2])  # identity
    assert torch.allclose(p[0, 2 * 3 + 1, 1:-1, 1:-1], torch.ones(3, 3))  # (1+2+1) * 2 / 8
    assert torch.allclose(p[0, 2 * 3 + 2, 1:-1, 1:-1], torch.zeros(3, 3))


def test_rotation_by_90_degrees_swaps_the_gradient_filters():
    k = perception_kernels(math.pi / 2)
    assert torch.allclose(k[1], -SOBEL_X.T, atol=1e-7)  # cos*sx - sin*sy = -sy
    assert torch.allclose(k[2], SOBEL_X, atol=1e-7)  # sin*sx + cos*sy = sx
    model = NCA()
    x = torch.rand(1, 16, 8, 8)
    p0, p90 = model.perceive(x, 0.0), model.perceive(x, math.pi / 2)
    assert torch.allclose(p90[:, 1::3], -p0[:, 2::3], atol=1e-6)
    assert torch.allclose(p90[:, 2::3], p0[:, 1::3], atol=1e-6)
    assert torch.allclose(model.perceive(x, 0.0), p0)  # switching back restores the filters


def test_parameter_count_and_zero_initialised_last_layer():
    model = NCA()
    assert model.parameter_count() == 8336
    assert torch.count_nonzero(model.hidden_to_update.weight) == 0
    assert torch.count_nonzero(model.hidden_to_update.bias) == 0
    # Zero-initialised means the untrained rule is the identity: every cell of a living state stays as it is.
    x = torch.rand(2, 16, 8, 8)
    x[:, 3] = 0.5  # every cell alive
    assert torch.equal(model(x, fire_mask=torch.ones(2, 1, 8, 8)), x)
    assert model.update(model.perceive(x, 0.0)).abs().max() == 0  # the update itself is zero, not just masked


def test_seed_and_untrained_model_leaves_seed_unchanged():
    seed = make_seed(9, 12, batch=2)
    assert seed.shape == (2, 16, 9, 12)
    assert torch.equal(seed[:, 3:, 4, 6], torch.ones(2, 13))
    assert torch.count_nonzero(seed[:, :3]) == 0 and torch.count_nonzero(seed) == 2 * 13
    x = grow(NCA(), seed.clone(), 50)
    assert torch.equal(x, seed)


def test_fire_rate_updates_about_half_the_cells_and_all_channels_together():
    torch.manual_seed(0)
    model = NCA(fire_rate=0.5)
    with torch.no_grad():
        model.hidden_to_update.bias.fill_(0.01)  # every cell would change every channel by 0.01
    x = torch.ones(4, 16, 64, 64)  # all alive
    y = model(x, generator=torch.Generator().manual_seed(1))
    changed = (y != x)
    assert torch.equal(changed.all(1), changed.any(1))  # a cell updates all its channels or none
    fraction = changed.any(1).float().mean().item()
    assert 0.47 < fraction < 0.53
    assert torch.allclose(y[changed], torch.full_like(y[changed], 1.01))  # no dropout-style rescaling
    always = NCA(fire_rate=1.0)
    with torch.no_grad():
        always.hidden_to_update.bias.fill_(0.01)
    assert always(x).ne(x).all()


def test_alive_mask_uses_3x3_max_pool_of_alpha_above_threshold():
    x = torch.zeros(1, 16, 7, 7)
    x[0, 3, 3, 3] = 0.11
    mask = alive_mask(x)[0, 0]
    assert mask[2:5, 2:5].all() and mask.sum() == 9
    x[0, 3, 3, 3] = 0.1  # not strictly above the threshold
    assert not alive_mask(x).any()


def test_isolated_weak_cells_are_killed_in_every_channel():
    model = NCA()
    x = torch.zeros(1, 16, 7, 7)
    x[0, :, 1, 1] = 0.05  # a cell whose neighbourhood alpha is <= 0.1: dead before and after
    x[0, :, 5, 5] = 0.5  # a healthy cell stays
    y = model(x)
    assert torch.count_nonzero(y[0, :, 1, 1]) == 0
    assert torch.equal(y[0, :, 5, 5], x[0, :, 5, 5])


def test_render_on_white():
    x = torch.zeros(1, 16, 1, 2)
    x[0, :4, 0, 1] = torch.tensor([0.5, 0.0, 0.0, 0.5])  # half-transparent red, premultiplied
    rgb = to_rgb(x)[0, :, 0]
    assert torch.allclose(rgb[:, 0], torch.ones(3))
    assert torch.allclose(rgb[:, 1], torch.tensor([1.0, 0.5, 0.5]))


def test_damage_circles_and_erase():
    keep = damage_circles(64, 40, 40, torch.Generator().manual_seed(0))
    assert keep.shape == (64, 1, 40, 40)
    erased = 1 - keep.mean(dim=(1, 2, 3))
    assert (erased > 0).all() and (erased < 0.5).all()  # radius 0.1..0.4 of the half-size
    x = torch.ones(1, 16, 10, 10)
    erase_circle(x, 5, 5, 2)
    assert x[0, :, 5, 5].sum() == 0 and x[0, :, 5, 8].sum() == 16 and x[0, :, 3, 5].sum() == 0


def test_damage_strokes_are_one_to_three_eraser_swipes():
    """Like a user's eraser: every sample loses something (a stroke through the middle half of the grid), none
    loses everything."""
    keep = damage_strokes(256, 36, 36, torch.Generator().manual_seed(0))
    assert keep.shape == (256, 1, 36, 36) and set(keep.unique().tolist()) <= {0.0, 1.0}
    erased = 1 - keep[:, :, 6:30, 6:30].mean(dim=(1, 2, 3))  # the pattern's box on the gallery's grid
    assert (erased > 0).all() and (erased < 1).all()
    assert erased.median() < 0.5  # most samples keep most of themselves
