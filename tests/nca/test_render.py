"""Growth frames: the rendered trajectory of the rule from the seed, with damage at the right step."""

import numpy as np
import torch

from backend.nca.model import NCA, erase_circle, make_seed
from backend.nca.render import growth_frames, rgb8


def growing_model() -> NCA:
    """Alpha and colour rise wherever a cell is alive: the pattern spreads a cell per step or so."""
    torch.manual_seed(1)
    model = NCA(hidden=32)
    with torch.no_grad():
        model.hidden_to_update.weight.normal_(0.0, 0.02)
        model.hidden_to_update.bias[:4] = torch.tensor([0.03, 0.01, 0.02, 0.2])
    return model


def test_growth_frames_follow_the_reference_rule_with_damage():
    model = growing_model()
    steps, every, damage_at, damage = 24, 6, 17, (11.0, 9.0, 4.0)
    frames = growth_frames(model, 19, 23, steps, every=every, damage_at=damage_at, damage=damage,
                           generator=torch.Generator().manual_seed(5))

    x, g, expected = make_seed(19, 23), torch.Generator().manual_seed(5), []
    with torch.no_grad():
        for step in range(steps + 1):
            if step % every == 0:
                expected.append(rgb8(x))
            if step == damage_at:
                erase_circle(x, *damage)
            x = model(x, generator=g)  # the reference rule, same fire masks
    assert len(frames) == len(expected) == steps // every + 1
    for got, want in zip(frames, expected, strict=True):
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1  # float rounding at most
    assert (frames[2][9, 10] < 250).any() and (frames[2] < 250).any(axis=-1).mean() > 0.2  # grown there...
    assert (frames[3][9, 10] == 255).all()  # ...and the erased centre is still white one step later
