"""The Growing NCA rule (Mordvintsev et al., Distill 2020), as in docs/nca-spec.md.

State tensors are NCHW float32: channels 0-2 premultiplied RGB, 3 alpha, 4.. hidden.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

CHANNELS = 16  # RGBA + 12 hidden channels
HIDDEN = 128  # width of the per-cell update network
FIRE_RATE = 0.5  # probability that a cell applies its update in a step
ALIVE_THRESHOLD = 0.1  # a cell is alive if some alpha in its 3x3 neighbourhood exceeds this
# The article's geometry: a target of 40 cells (its longer side) with 16 empty cells around it.
TARGET_SIZE = 40
TARGET_PADDING = 16
PAPER_GRID = TARGET_SIZE + 2 * TARGET_PADDING  # 72: the article's grid for a square image
PERCEPTION_FILTERS = 3  # identity, Sobel-x, Sobel-y

_SOBEL_X = torch.outer(torch.tensor([1.0, 2.0, 1.0]), torch.tensor([-1.0, 0.0, 1.0])) / 8.0
_IDENTITY = torch.tensor([[0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])


def perception_kernels(angle: float = 0.0) -> torch.Tensor:
    """The three 3x3 filters `[identity, rotated Sobel-x, rotated Sobel-y]`, shape (3, 3, 3).

    Rotating the gradient filters by `angle` (radians) grows the pattern rotated by `angle`
    ("Rotating the perceptive field" in the article).
    """
    c, s = math.cos(angle), math.sin(angle)
    sobel_y = _SOBEL_X.T
    return torch.stack([_IDENTITY, c * _SOBEL_X - s * sobel_y, s * _SOBEL_X + c * sobel_y])


def depthwise_filters(channels: int, angle: float = 0.0) -> torch.Tensor:
    """Depthwise conv weight (3*channels, 1, 3, 3), output order channel-major `c*3 + k`."""
    return perception_kernels(angle).repeat(channels, 1, 1)[:, None]


def pick_device(name: str = "auto") -> torch.device:
    """`auto`: CUDA if torch sees it, else Apple's MPS, else the CPU; any other name as given."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def alive_mask(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) bool: some alpha in the cell's 3x3 neighbourhood is above the threshold."""
    return F.max_pool2d(x[:, 3:4], kernel_size=3, stride=1, padding=1) > ALIVE_THRESHOLD


def make_seed(height: int, width: int, channels: int = CHANNELS, batch: int = 1,
              device: torch.device | str = "cpu") -> torch.Tensor:
    """All zeros but the centre cell, whose alpha and hidden channels are 1 (RGB stays 0)."""
    return plant_seed(torch.zeros(batch, channels, height, width, device=device), width // 2, height // 2)


def plant_seed(x: torch.Tensor, cx: int, cy: int) -> torch.Tensor:
    """Make cell (cx, cy) a seed cell in place (alpha and hidden channels 1); returns x."""
    x[:, 3:, cy, cx] = 1.0
    return x


def to_rgba(x: torch.Tensor) -> torch.Tensor:
    return x[:, :4]


def to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Premultiplied RGB composited on white, clamped to [0, 1]: (B, 3, H, W)."""
    alpha = x[:, 3:4].clamp(0.0, 1.0)
    return (1.0 - alpha + x[:, :3]).clamp(0.0, 1.0)


class NCA(nn.Module):
    """One CA step: perceive, per-cell update network, stochastic update, alive masking."""

    def __init__(self, channels: int = CHANNELS, hidden: int = HIDDEN, fire_rate: float = FIRE_RATE):
        super().__init__()
        if channels < 4:
            raise ValueError("an NCA needs at least 4 channels (RGBA)")
        if not 0.0 < fire_rate <= 1.0:
            raise ValueError("fire_rate must be in (0, 1]")
        self.channels, self.hidden, self.fire_rate = channels, hidden, fire_rate
        self.perceive_to_hidden = nn.Conv2d(PERCEPTION_FILTERS * channels, hidden, kernel_size=1)
        self.hidden_to_update = nn.Conv2d(hidden, channels, kernel_size=1)
        # "Initialize the weights of the last layer to zero": an untrained rule does nothing.
        nn.init.zeros_(self.hidden_to_update.weight)
        nn.init.zeros_(self.hidden_to_update.bias)
        self.register_buffer("_filters", depthwise_filters(channels), persistent=False)
        self._filters_angle = 0.0

    def filters(self, angle: float) -> torch.Tensor:
        if angle != self._filters_angle:  # cached: the angle rarely changes between steps
            self._filters = depthwise_filters(self.channels, angle).to(self._filters)
            self._filters_angle = angle
        return self._filters

    def perceive(self, x: torch.Tensor, angle: float = 0.0) -> torch.Tensor:
        """(B, C, H, W) -> (B, 3C, H, W): each channel and its two gradients, zero padded."""
        return F.conv2d(x, self.filters(angle), padding=1, groups=self.channels)

    def update(self, perception: torch.Tensor) -> torch.Tensor:
        return self.hidden_to_update(F.relu(self.perceive_to_hidden(perception)))

    def fire_mask(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, 1, H, W) bool: the cells that apply their update this step (U < fire_rate)."""
        b, _, h, w = x.shape
        u = torch.rand(b, 1, h, w, device=x.device, generator=generator)
        return u < self.fire_rate

    def forward(self, x: torch.Tensor, angle: float = 0.0, fire_mask: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        pre_alive = alive_mask(x)
        dx = self.update(self.perceive(x, angle))
        if fire_mask is None:
            fire_mask = self.fire_mask(x, generator)
        x = x + dx * fire_mask  # no rescaling, unlike dropout
        post_alive = alive_mask(x)
        return x * (pre_alive & post_alive)

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())


def damage_circles(batch: int, height: int, width: int, generator: torch.Generator | None = None,
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """(batch, 1, H, W) float keep-mask with one random circle of zeros per sample.

    Centre uniform in [-0.5, 0.5], radius in [0.1, 0.4], grid coordinates scaled to [-1, 1].
    """
    xs = torch.linspace(-1.0, 1.0, width, device=device)[None, None, :]
    ys = torch.linspace(-1.0, 1.0, height, device=device)[None, :, None]
    centre = torch.rand(2, batch, 1, 1, device=device, generator=generator) - 0.5
    radius = torch.rand(batch, 1, 1, device=device, generator=generator) * 0.3 + 0.1
    dx, dy = (xs - centre[0]) / radius, (ys - centre[1]) / radius
    inside = dx * dx + dy * dy < 1.0
    return (~inside).float()[:, None]


def damage_strokes(batch: int, height: int, width: int, generator: torch.Generator | None = None,
                   device: torch.device | str = "cpu", strokes: int = 3) -> torch.Tensor:
    """(batch, 1, H, W) float keep-mask with 1 to `strokes` eraser strokes per sample, like a user's swipes.

    Each stroke is a segment through a point uniform in [-0.5, 0.5] (grid coordinates scaled to [-1, 1]),
    at a random angle, 0.6 to 1.6 long, erasing within 0.08 to 0.2 of it (the Watch view's eraser is 0.17).
    """
    xs = torch.linspace(-1.0, 1.0, width, device=device)[None, None, :]
    ys = torch.linspace(-1.0, 1.0, height, device=device)[None, :, None]
    draw = torch.rand(6, strokes, batch, 1, 1, device=device, generator=generator)
    count = 1 + (torch.rand(batch, device=device, generator=generator) * strokes).long()  # 1..strokes
    keep = torch.ones(batch, height, width, dtype=torch.bool, device=device)
    for k in range(strokes):
        cx, cy = draw[0, k] - 0.5, draw[1, k] - 0.5
        angle, half = draw[2, k] * math.pi, (draw[3, k] + 0.6) / 2  # half its length
        radius = draw[4, k] * 0.12 + 0.08
        dx, dy = torch.cos(angle), torch.sin(angle)
        px, py = xs - cx, ys - cy
        along = (px * dx + py * dy).clamp(-half, half)
        inside = (px - along * dx) ** 2 + (py - along * dy) ** 2 < radius**2
        keep &= ~(inside & (k < count)[:, None, None])
    return keep.float()[:, None]


def erase_circle(x: torch.Tensor, cx: float, cy: float, radius: float) -> torch.Tensor:
    """Zero every cell within `radius` cells of (cx, cy) in grid cells, in place; returns x."""
    _, _, h, w = x.shape
    ys = torch.arange(h, device=x.device)[:, None]
    xs = torch.arange(w, device=x.device)[None, :]
    inside = (xs - cx) ** 2 + (ys - cy) ** 2 <= radius**2
    x[..., inside] = 0.0
    return x
