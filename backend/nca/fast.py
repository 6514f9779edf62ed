"""Fast paths for the NCA rule: the same function as `backend.nca.model.NCA`, with less work.

Public API (all take the reference `NCA` module, full-grid NCHW states, and draw the random
fire masks exactly as `NCA.forward` does, so a shared generator gives the same trajectory):

- `rollout(model, x, steps, angle=0.0, generator=None, fire_masks=None) -> x`
  Differentiable: `steps` CA steps for training (`Trainer.rollout` uses it). `fire_masks`, if
  given, is one (B, 1, H, W) bool mask per step, as `NCA.forward(fire_mask=...)` takes.
- `step_batch(model, x, angle=0.0, generator=None, steps=1) -> x`
  Inference (no autograd): advances a batch of states (B, C, H, W) by `steps` steps and returns
  a new, ordinary tensor of the same shape (safe to edit in place, e.g. `erase_circle`); the
  input is not modified. This is the stream service's tick: batch the viewers' grids that share
  a model into one call (the states may differ; the live box is their union).
- `grow(model, x, steps, angle=0.0, generator=None) -> x`
  The same, `steps` first: what the CLI, the previews and the tests call to grow a pattern.

Why it is faster, and why it is still exact (figures: docs/benchmarks.md):
- Live box: a cell can only be non-zero after a step if it is within one cell of a live cell
  (alpha > 0.1) before it, so everything outside the box of the live region is exactly zero.
  Each step computes only on that box grown by two cells (one for the update's reach, one so the
  post-update alive test sees every neighbour it looks at), and the box follows the pattern.
- Active cells: inside the box the update network runs only on cells that fire this step and
  are next to a pre-update-alive cell; elsewhere the reference adds zero (no fire) or the cell is
  zeroed and no surviving cell's alive test looks at it. About a quarter of the box.
- Cell-major (channels-last) layout: the perception is three shifted sums over the 16 channels,
  the two 1x1 layers are two GEMMs over the active cells, and the rotation angle (and the Sobel
  filters' 1/8) is folded into the first layer's weights (`W [x, R(sx, sy)] = W' [x, sx, sy]`).
- A hand-written backward per step that keeps only the active cells' perception and hidden layer;
  alive masks as bool dilations, outside autograd.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .model import ALIVE_THRESHOLD, NCA

Box = tuple[int, int, int, int]  # y0, y1, x0, x1 (half-open) in full-grid cells
MARGIN = 2  # cells around the live region that a step must compute (see module docstring)


def cell_weights(model: NCA, angle: float = 0.0) -> tuple[torch.Tensor, ...]:
    """(w1 (3C, hidden), b1, w2 (hidden, C), b2) for cell-major inputs [x, 8 sobel_x, 8 sobel_y].

    The reference feeds `[x_c, cos*sx - sin*sy, sin*sx + cos*sy]` per channel (channel-major);
    regrouping the weights makes the perception independent of the angle. Differentiable.
    """
    w1 = model.perceive_to_hidden.weight[:, :, 0, 0]  # (hidden, 3C), column c*3 + k
    hidden = w1.shape[0]
    w = w1.view(hidden, -1, 3)
    w_gx, w_gy = w[:, :, 1], w[:, :, 2]
    if angle == 0.0:
        w_sx, w_sy = w_gx, w_gy
    else:
        c, s = math.cos(angle), math.sin(angle)
        w_sx, w_sy = c * w_gx + s * w_gy, c * w_gy - s * w_gx
    w1_cells = torch.cat([w[:, :, 0], w_sx * 0.125, w_sy * 0.125], 1).t()  # the Sobel filters' 1/8
    w2 = model.hidden_to_update.weight[:, :, 0, 0].t()
    return w1_cells, model.perceive_to_hidden.bias, w2, model.hidden_to_update.bias


def _sobel_x_into(xp: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """8 x Sobel-x of a zero-padded (B, h+2, w+2, C) tensor, written into `out` (B, h, w, C).

    The filters' 1/8 is folded into the weights instead (exact: a power of two).
    """
    smooth = torch.add(xp[:, :-2], xp[:, 1:-1], alpha=2.0).add_(xp[:, 2:])  # [1, 2, 1] down the rows
    return torch.sub(smooth[:, :, 2:], smooth[:, :, :-2], out=out)


def _sobel_y_into(xp: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """8 x Sobel-y (the transposed filter) of a zero-padded tensor, written into `out`."""
    smooth = torch.add(xp[:, :, :-2], xp[:, :, 1:-1], alpha=2.0).add_(xp[:, :, 2:])  # along the rows
    return torch.sub(smooth[:, 2:], smooth[:, :-2], out=out)


def perceive_cells(x: torch.Tensor) -> torch.Tensor:
    """(B, h, w, C) -> (B*h*w, 3C): each cell's channels, 8 x Sobel-x and 8 x Sobel-y (zero padded)."""
    c = x.shape[-1]
    out = torch.empty(*x.shape[:-1], 3 * c, dtype=x.dtype, device=x.device)
    out[..., :c] = x
    xp = F.pad(x, (0, 0, 1, 1, 1, 1))
    _sobel_x_into(xp, out[..., c:2 * c])
    _sobel_y_into(xp, out[..., 2 * c:])
    return out.view(-1, 3 * c)


def _perceive_adjoint(grad_p: torch.Tensor, grad_x: torch.Tensor) -> torch.Tensor:
    """Add the transposed perception to `grad_x` (B, h, w, C), in place; `grad_p` is the gradient
    w.r.t. the perception, zero padded by one cell: (B, h+2, w+2, 3C).

    Identity is its own transpose; each Sobel filter turned by 180 degrees is minus itself.
    """
    c = grad_x.shape[-1]
    grad_x.add_(grad_p[:, 1:-1, 1:-1, :c])
    grad_x.sub_(_sobel_x_into(grad_p[..., c:2 * c], torch.empty_like(grad_x)))
    grad_x.sub_(_sobel_y_into(grad_p[..., 2 * c:], torch.empty_like(grad_x)))
    return grad_x


def _padded_rows(index: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Flat cell indices of a (B, h, w) grid -> the same cells' indices in its 1-cell-padded grid."""
    image, cell = index.div(height * width, rounding_mode="floor"), index.remainder(height * width)
    y, x = cell.div(width, rounding_mode="floor"), cell.remainder(width)
    return (image * (height + 2) + y + 1) * (width + 2) + x + 1


def _dilate(mask: torch.Tensor) -> torch.Tensor:
    """(B, h, w) bool: True where some cell of the 3x3 neighbourhood is (zero padded), separably."""
    p = F.pad(mask.view(torch.uint8), (1, 1, 1, 1)).view(torch.bool)
    rows = p[:, :, :-2] | p[:, :, 1:-1] | p[:, :, 2:]
    return rows[:, :-2] | rows[:, 1:-1] | rows[:, 2:]


def _alive(x: torch.Tensor) -> torch.Tensor:
    """(B, h, w, C) -> (B, h, w) bool, as `model.alive_mask`: the 3x3 max of alpha exceeds the
    threshold exactly when some alpha in the 3x3 exceeds it (a bool dilation is ~20x cheaper)."""
    return _dilate(x[..., 3] > ALIVE_THRESHOLD)


def _step_forward(x: torch.Tensor, fire: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor,
                  b2: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """One CA step on a cell-major crop without autograd; `fire` is (B, h, w) bool.

    The update network runs only on the cells whose update can matter: those that fire and are
    next to a cell that is alive before the update (elsewhere the reference adds zero, or the
    cell is zeroed and no surviving cell's post-update alive test looks at it).
    Returns (new x, alive mask, active cell index, their perception, their hidden layer, keep).
    """
    channels = x.shape[-1]
    pre = _alive(x)
    active = (fire & _dilate(pre)).view(-1).nonzero().squeeze(1)
    perception = perceive_cells(x).index_select(0, active)
    hidden = torch.addmm(b1, perception, w1).relu_()
    updated = torch.addmm(b2, hidden, w2).add_(perception[:, :channels])  # x + dx where the cell fires
    new = x.clone()
    new.view(-1, channels).index_copy_(0, active, updated)  # (index_add_ is several times slower)
    mask = pre & _alive(new)
    keep = mask.unsqueeze(-1).to(x.dtype)
    return new.mul_(keep), mask, active, perception, hidden, keep


class _Step(torch.autograd.Function):
    """One CA step with a hand-written backward: saves only the active cells' perception and hidden layer."""

    @staticmethod
    def forward(ctx, x, fire, w1, b1, w2, b2):  # noqa: ANN001, ANN205 (autograd signature)
        new, mask, active, perception, hidden, keep = _step_forward(x, fire, w1, b1, w2, b2)
        ctx.save_for_backward(active, perception, hidden, keep, w1, w2)
        ctx.mark_non_differentiable(mask)
        return new, mask, active.numel()

    @staticmethod
    def backward(ctx, grad, _grad_mask, _grad_count):  # noqa: ANN001, ANN205
        active, perception, hidden, keep, w1, w2 = ctx.saved_tensors
        channels = grad.shape[-1]
        grad = (grad * keep).contiguous()  # d/d(x + dx * fire); a fresh tensor, ours to modify
        grad_dx = grad.view(-1, channels).index_select(0, active)
        grad_w2, grad_b2 = hidden.t() @ grad_dx, grad_dx.sum(0)
        grad_hidden = torch.ops.aten.threshold_backward(grad_dx @ w2.t(), hidden, 0.0)  # ReLU's backward
        grad_w1, grad_b1 = perception.t() @ grad_hidden, grad_hidden.sum(0)
        batch, height, width, _ = grad.shape
        grad_p = grad.new_zeros(batch, height + 2, width + 2, 3 * channels)  # zero padded for the adjoint
        grad_p.view(-1, 3 * channels).index_copy_(0, _padded_rows(active, height, width), grad_hidden @ w1.t())
        grad_x = _perceive_adjoint(grad_p, grad)
        return grad_x, None, grad_w1, grad_b1, grad_w2, grad_b2


def _step(x: torch.Tensor, weights: tuple[torch.Tensor, ...],
          fire: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One CA step on a cell-major crop; `fire` is (B, h, w) bool. Returns (x, alive mask, active cells)."""
    if torch.is_grad_enabled() and (x.requires_grad or any(w.requires_grad for w in weights)):
        return _Step.apply(x, fire, *weights)
    new, mask, active = _step_forward(x, fire, *weights)[:3]
    return new, mask, active.numel()


def _box(mask: torch.Tensor, origin: tuple[int, int], height: int, width: int) -> Box | None:
    """Box of the True cells of a (B, h, w) crop at `origin`, grown by MARGIN, clipped to the grid."""
    rows = mask.any(0).any(1).nonzero()
    if rows.numel() == 0:
        return None
    cols = mask.any(0).any(0).nonzero()
    y, x = origin
    return (max(y + int(rows[0]) - MARGIN, 0), min(y + int(rows[-1]) + 1 + MARGIN, height),
            max(x + int(cols[0]) - MARGIN, 0), min(x + int(cols[-1]) + 1 + MARGIN, width))


def _move(x: torch.Tensor, old: Box, new: Box) -> torch.Tensor:
    """Re-crop a (B, h, w, C) crop from box `old` to box `new` (padding with zeros, or cutting)."""
    if old == new:
        return x
    return F.pad(x, (0, 0, old[2] - new[2], new[3] - old[3], old[0] - new[0], new[1] - old[1]))


def _fire(model: NCA, x: torch.Tensor, box: Box, generator: torch.Generator | None,
          given: torch.Tensor | None) -> torch.Tensor:
    """The step's (B, h, w) bool fire mask, drawn on the full grid exactly like `NCA.fire_mask`, cropped."""
    full = model.fire_mask(x, generator) if given is None else given
    y0, y1, x0, x1 = box
    return full[:, 0, y0:y1, x0:x1].contiguous()


def rollout(model: NCA, x: torch.Tensor, steps: int, angle: float = 0.0,
            generator: torch.Generator | None = None,
            fire_masks: Sequence[torch.Tensor] | None = None, stats: dict[str, int] | None = None) -> torch.Tensor:
    """`steps` applications of `model(x, angle)` (differentiable), computed on the live box only.

    `stats`, if given, gets `cell_steps` (cells run through the update network: for FLOP counts)
    and `box_cell_steps` (cells of the live boxes) added.
    """
    batch, _, height, width = x.shape
    weights = cell_weights(model, angle)
    with torch.no_grad():
        box = _box(x.any(1), (0, 0), height, width) or (0, 1, 0, 1)
    y0, y1, x0, x1 = box
    cells = x[:, :, y0:y1, x0:x1].permute(0, 2, 3, 1).contiguous()
    shape_probe = x[:, :1]  # what model.fire_mask reads the shape and device from
    for t in range(steps):
        fire = _fire(model, shape_probe, box, generator, None if fire_masks is None else fire_masks[t])
        cells, mask, active = _step(cells, weights, fire)
        if stats is not None:
            stats["box_cell_steps"] = stats.get("box_cell_steps", 0) + mask.numel()
            stats["cell_steps"] = stats.get("cell_steps", 0) + active
        new_box = _box(mask, (box[0], box[2]), height, width) or box  # all dead: stays zero anyway
        cells, box = _move(cells, box, new_box), new_box
    y0, y1, x0, x1 = box
    out = torch.zeros_like(x)
    out[:, :, y0:y1, x0:x1] = cells.permute(0, 3, 1, 2)
    return out


def step_batch(model: NCA, x: torch.Tensor, angle: float = 0.0, generator: torch.Generator | None = None,
               steps: int = 1, stats: dict[str, int] | None = None) -> torch.Tensor:
    """Inference: `steps` steps of a batch of full-grid states (B, C, H, W); returns a new tensor."""
    with torch.no_grad():  # not inference_mode: callers edit the result in place (erase, seed)
        return rollout(model, x, steps, angle, generator, stats=stats)


def grow(model: NCA, x: torch.Tensor, steps: int, angle: float = 0.0,
         generator: torch.Generator | None = None) -> torch.Tensor:
    """`steps` steps without gradients through the exact fast path; returns a new tensor (x is left alone)."""
    return step_batch(model, x, angle, generator=generator, steps=steps)
