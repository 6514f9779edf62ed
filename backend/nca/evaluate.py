"""Measuring how well a model grows: PSNR against its reference picture, alive fraction, cuts, rotation.

The building blocks of the model card (`card.py`) and of the Distill export's quantisation report
(`distill.py`). Everything is measured on the RGB composited on white (what a viewer sees):
PSNR = 10 log10(1 / MSE) over the whole grid, of the mean squared error of several stochastic runs.

The reference picture is the target stored in the model file. A model without one (the Distill
article's models are weights only) is compared with itself: the mean picture of a separate batch of
runs grown from the seed for the growth steps ("self" reference). That measures whether the pattern
comes out the same every time and stays, not whether it looks like an image nobody stored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import fast
from .model import ALIVE_THRESHOLD, NCA, erase_circle, make_seed, to_rgb
from .modelfile import ModelFile

DEFAULT_GROWTH_STEPS = 96  # the paper's max_steps; used when the model file does not say how it was trained
MAX_PSNR = 60.0  # identical pictures: reported as this instead of infinity (keeps the JSON finite)
RUNS = 4  # stochastic runs per measurement
SEED = 0  # one fixed generator seed: the same model gives the same card


def growth_steps(mf: ModelFile) -> int:
    """The CA steps the model was trained to grow in: its training `max_steps`, else the paper's 96."""
    config = mf.info.extra.get("train_config") if isinstance(mf.info.extra, dict) else None
    steps = config.get("max_steps") if isinstance(config, dict) else None
    return int(steps) if isinstance(steps, int | float) and 1 <= steps <= 10_000 else DEFAULT_GROWTH_STEPS


def mse(rgb: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) pictures vs one (3, H, W) reference, values in [0, 1] -> (B,) mean squared error.

    A non-finite picture (an exploded state) counts as the worst possible, 1.
    """
    error = (rgb - reference[None]).pow(2).mean(dim=(1, 2, 3))
    return torch.where(torch.isfinite(error), error, torch.ones_like(error))


def psnr_of(error: float) -> float:
    """dB from a mean squared error of [0, 1] pictures; identical pictures score MAX_PSNR."""
    return 10.0 * math.log10(1.0 / max(error, 10 ** (-MAX_PSNR / 10)))


def psnr(rgb: torch.Tensor, reference: torch.Tensor) -> float:
    """PSNR of the runs' mean squared error against the reference (one number for a batch of runs)."""
    return psnr_of(mse(rgb, reference).mean().item())


def kept(error: float, grown_error: float, blank_error: float) -> float:
    """The share of the grown pattern's quality still there: 1 as good as when grown, 0 as bad as an
    empty grid, below 0 worse than that (an explosion). Scale-free, so the same threshold works for a
    stored target and for a model's own picture."""
    return (blank_error - error) / max(blank_error - grown_error, 1e-12)


MIN_HARM = 0.05  # a cut is taken to have cost at least this share of the quality


def recovered(kept_regrown: float, kept_cut: float, kept_twin: float) -> float:
    """The share of a cut's damage repaired, from `kept` shares: 1 as good as the uncut twin at the same
    step, 0 no better than just after the cut; clamped to [-1, 1.5]. A cut that did (almost) no harm
    counts as MIN_HARM of harm, so the ratio of two tiny numbers cannot decide anything."""
    harm = max(kept_twin - kept_cut, MIN_HARM)
    return min(1.5, max(-1.0, (kept_regrown - (kept_twin - harm)) / harm))


def alive_fraction(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B,): the fraction of the grid whose alpha exceeds the alive threshold."""
    return (x[:, 3] > ALIVE_THRESHOLD).float().mean(dim=(1, 2))


def finite(x: torch.Tensor) -> torch.Tensor:
    """(B,) bool: the state holds no NaN or infinity (a rule that explodes overflows)."""
    return torch.isfinite(x.flatten(1)).all(1)


def pictures(x: torch.Tensor) -> torch.Tensor:
    """States -> RGB on white, with non-finite cells shown black (they would otherwise be NaN)."""
    return torch.nan_to_num(to_rgb(torch.nan_to_num(x, nan=0.0)), nan=0.0)


@dataclass(frozen=True)
class Thresholds:
    """What each check must reach; chosen from evidence (docs/model-format.md#model-card)."""

    grow_gain: float = 6.0  # dB: growth PSNR at least this far above an empty grid's, and...
    alive_ratio: float = 2.0  # ...the live area within this factor of the target's (a target is stored), or
    min_alive_self: float = 0.02  # ...(no target) between these fractions of the grid: smaller is a speck,
    max_alive_self: float = 0.8  # bigger is a rule that fills the grid, and...
    settle_ratio: float = 1.15  # ...the live area within this factor of what it was at 3/4 of the steps
    min_alive: float = 0.005  # later, fewer live cells than this fraction of the grid: it died
    persist_kept: float = 0.6  # at 1000 and 2000 steps, at least this share of the grown quality is kept...
    persist_alive_ratio: float = 1.5  # ...and the live area stays within this factor of the grown one
    regrow_recovered: float = 0.5  # 200 steps after a cut, at least this share of the damage is repaired,
    regrow_kept: float = 0.85  # or the pattern is back to this share of its grown quality (whole, a cell off)
    rotate_kept: float = 0.6  # turned growth keeps this share of the unturned growth's quality


THRESHOLDS = Thresholds()


@dataclass
class Reference:
    rgb: torch.Tensor  # (3, H, W) on white
    kind: str  # "target" or "self"
    alive: float  # the reference's alive fraction (target alpha, or the self runs' mean)
    box: tuple[int, int, int, int]  # y0, y1, x0, x1 (half-open) of its alive cells; the whole grid if none


def _box(alpha: torch.Tensor) -> tuple[int, int, int, int]:
    rows, cols = (alpha > ALIVE_THRESHOLD).any(1).nonzero(), (alpha > ALIVE_THRESHOLD).any(0).nonzero()
    if rows.numel() == 0:
        return 0, alpha.shape[0], 0, alpha.shape[1]
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def reference(mf: ModelFile, steps: int, runs: int = RUNS, seed: int = SEED) -> Reference:
    """The picture a good model grows: the stored target, else the model's own mean grown picture."""
    height, width = mf.info.grid_height, mf.info.grid_width
    if mf.target is not None and tuple(mf.target.shape[1:]) == (height, width):
        target = mf.target.float().cpu()[None]
        return Reference(to_rgb(target)[0], "target", alive_fraction(target).item(), _box(target[0, 3]))
    generator = torch.Generator().manual_seed(seed + 1)  # not the runs it will be compared with
    x = grow(mf.model, make_seed(height, width, mf.model.channels, batch=runs), steps, generator=generator)
    ok = finite(x)
    x = x[ok] if ok.any() else torch.zeros_like(x[:1])
    return Reference(pictures(x).mean(0), "self", alive_fraction(x).mean().item(), _box(x[:, 3].mean(0)))


def blank_mse(ref: Reference) -> float:
    """Error of an empty (all white) grid against the reference: what growing nothing scores."""
    return mse(torch.ones_like(ref.rgb)[None], ref.rgb).item()


@dataclass
class Growth:
    """Runs grown from the seed for the growth steps, measured against the reference."""

    x: torch.Tensor  # (runs, C, H, W) the grown states
    error: float  # mean squared error of their pictures against the reference
    alive: float  # mean alive fraction
    alive_early: float  # the same at 3/4 of the steps: a grown pattern has settled, a spreading rule has not
    early_steps: int


def growth(model: NCA, mf: ModelFile, ref: Reference, steps: int, runs: int = RUNS,
           generator: torch.Generator | None = None) -> Growth:
    """`runs` runs of `model` (the float one or its 8-bit copy) from the seed on `mf`'s grid."""
    early = round(steps * 0.75)
    x = make_seed(mf.info.grid_height, mf.info.grid_width, model.channels, batch=runs)
    x_early = grow(model, x, early, generator=generator)
    x = grow(model, x_early, steps - early, generator=generator)  # the same random draws as one call
    error = mse(pictures(x), ref.rgb).mean().item()
    return Growth(x, error, alive_of(x), alive_of(x_early), early)


def alive_of(x: torch.Tensor) -> float:
    """Mean alive fraction of the runs; a non-finite (exploded) run counts as all alive."""
    return torch.where(finite(x), alive_fraction(torch.nan_to_num(x)), torch.ones(x.shape[0])).mean().item()


def grows_enough(g: Growth, ref: Reference, t: Thresholds = THRESHOLDS) -> bool:
    """Whether the runs count as grown: well above an empty grid, about the right size, and settled."""
    close = psnr_of(g.error) >= psnr_of(blank_mse(ref)) + t.grow_gain
    if ref.kind == "target":
        sized = ref.alive / t.alive_ratio <= g.alive <= ref.alive * t.alive_ratio
    else:
        sized = t.min_alive_self <= g.alive <= t.max_alive_self
    settled = g.alive_early > 0 and 1 / t.settle_ratio <= g.alive / g.alive_early <= t.settle_ratio
    return close and sized and settled


def grow(model: NCA, x: torch.Tensor, steps: int, angle: float = 0.0,
         generator: torch.Generator | None = None) -> torch.Tensor:
    """`fast.grow` on the model's device, the result back on the CPU; keeps going whatever the values become."""
    device = next(model.parameters()).device
    return fast.grow(model, x.to(device), steps, angle, generator=generator).cpu()


def rotate_picture(rgb: torch.Tensor, degrees: float, centre: tuple[float, float]) -> torch.Tensor:
    """(3, H, W) on white, turned by `degrees` about the cell `centre` (x, y), bilinear, white outside.

    The direction is the one in which `fast.grow(..., angle)` turns the pattern it grows.
    """
    _, h, w = rgb.shape
    a = math.radians(degrees)
    c, s = math.cos(a), math.sin(a)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    dx, dy = xs - centre[0], ys - centre[1]
    # The output cell at offset (dx, dy) shows the input cell at the inverse rotation of that offset.
    src_x, src_y = c * dx - s * dy + centre[0], s * dx + c * dy + centre[1]
    grid = torch.stack([src_x / (w - 1) * 2 - 1, src_y / (h - 1) * 2 - 1], -1)[None]
    ink = F.grid_sample((1.0 - rgb)[None], grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return 1.0 - ink[0]


def centre_cut(box: tuple[int, int, int, int]) -> tuple[float, float, float]:
    """(x, y, radius) of the centre cut: a disc at the centre of the pattern's box, a quarter of its larger
    side in radius (at least 2 cells), so a ring is left to regrow from."""
    y0, y1, x0, x1 = box
    return (x0 + x1) / 2, (y0 + y1) / 2, max(2.0, max(y1 - y0, x1 - x0) / 4)


def edge_cut_column(box: tuple[int, int, int, int]) -> int:
    """The edge cut removes every cell from this column rightwards: the right quarter of the pattern's box
    (at least one column), cut off by a straight line; it always takes some of the pattern."""
    _, _, x0, x1 = box
    return x1 - max(1, round((x1 - x0) / 4))


def erase(x: torch.Tensor, disc: tuple[float, float, float]) -> torch.Tensor:
    """A copy of the states with the disc (x, y, radius) erased."""
    return erase_circle(x.clone(), *disc)


def cut_off_right(x: torch.Tensor, column: int) -> torch.Tensor:
    """A copy of the states with every cell from `column` rightwards erased."""
    out = x.clone()
    out[..., column:] = 0.0
    return out
