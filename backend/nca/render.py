"""Turning states into pictures: RGBA8 frames, animated GIFs and PNG strips."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .fast import grow
from .model import NCA, erase_circle, make_seed, to_rgb


def rgb8(x: torch.Tensor) -> np.ndarray:
    """(1, C, H, W) or (C, H, W) state -> (H, W, 3) uint8, RGB composited on white."""
    if x.ndim == 3:
        x = x[None]
    return (to_rgb(x)[0].permute(1, 2, 0).detach().cpu().numpy() * 255.0 + 0.5).astype(np.uint8)


def rgba8(x: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) states -> (B, H, W, 4) uint8: RGB on white, alpha = clamped alpha channel."""
    rgb = to_rgb(x)
    alpha = x[:, 3:4].clamp(0.0, 1.0)
    return (torch.cat([rgb, alpha], 1).permute(0, 2, 3, 1) * 255.0 + 0.5).to(torch.uint8).cpu().numpy()


def upscale(frame: np.ndarray, scale: int) -> Image.Image:
    """Nearest-neighbour enlargement by an integer factor: every cell stays a crisp square."""
    img = Image.fromarray(frame)
    return img if scale == 1 else img.resize((img.width * scale, img.height * scale), Image.NEAREST)


def save_gif(frames: Sequence[np.ndarray], path: str | Path | io.BytesIO, scale: int = 4,
             frame_ms: int = 40) -> None:
    images = [upscale(f, scale) for f in frames]
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:], duration=frame_ms,
                   loop=0, optimize=False, disposal=1)


def save_strip(frames: Sequence[np.ndarray], path: str | Path | io.BytesIO, scale: int = 4) -> None:
    """All frames side by side in one PNG."""
    strip = np.concatenate(list(frames), axis=1)
    upscale(strip, scale).save(path, format="PNG")


def png_bytes(frame: np.ndarray, scale: int = 1) -> bytes:
    buf = io.BytesIO()
    upscale(frame, scale).save(buf, format="PNG")
    return buf.getvalue()


Disc = tuple[float, float, float]  # x, y, radius in cells


def growth_frames(model: NCA, height: int, width: int, steps: int, every: int = 1,
                  angle: float = 0.0, damage_at: int | None = None,
                  damage: Disc | Callable[[torch.Tensor], Disc] | None = None,
                  generator: torch.Generator | None = None) -> list[np.ndarray]:
    """RGB frames of growth from the seed: step 0, every `every` steps, and always step `steps`.

    `damage` is (x, y, radius) in cells, or a function of the state that says where, erased after
    `damage_at` steps. Steps go through the fast path (`fast.grow`, ~10x quicker than the dense rule
    on a growing pattern): the CLI's and the API's videos are drawn on demand.
    """
    device = next(model.parameters()).device
    x = make_seed(height, width, model.channels, device=device)
    frames = [rgb8(x)]
    with torch.no_grad():
        for step in range(1, steps + 1):
            if damage is not None and step - 1 == damage_at:
                erase_circle(x, *(damage(x) if callable(damage) else damage))
            x = grow(model, x, 1, angle, generator=generator)
            if step % every == 0 or step == steps:
                frames.append(rgb8(x))
    return frames


def grown_frame(model: NCA, height: int, width: int, steps: int, seed: int = 0) -> np.ndarray:
    """The RGB frame after `steps` steps of growth from the seed, the same picture for the same `seed`."""
    device = next(model.parameters()).device
    generator = torch.Generator(device).manual_seed(seed)
    return rgb8(grow(model, make_seed(height, width, model.channels, device=device), steps, generator=generator))
