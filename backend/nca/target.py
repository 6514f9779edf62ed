"""Target images: load safely, thumbnail to a max side, premultiply, pad (docs/nca-spec.md, "The target")."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .options import check_bounds, option
from .render import upscale

TARGET_SIZE = 40  # longer side of the target after thumbnailing, in cells
TARGET_PADDING = 16  # empty cells around the target on every side
PAPER_GRID = TARGET_SIZE + 2 * TARGET_PADDING  # 72: the article's grid for a square image
MIN_TARGET_SIZE, MAX_TARGET_SIZE = 8, 128
MAX_PADDING = 64
MIN_IMAGE_SIDE = 4  # a thinner image has nothing to learn
MAX_IMAGE_PIXELS = 40_000_000  # decoded pixels; more is treated as a decompression bomb
ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
KEY_TOLERANCE = 24  # max per-channel difference (0-255) from the background colour to key out


class TargetError(ValueError):
    """The image cannot be used as a target; the message says why and what to do."""


@dataclass(frozen=True)
class TargetOptions:
    """How an image becomes a target; its fields are job options (backend.nca.options)."""

    size: int = option(TARGET_SIZE, "longer side of the target in cells", ge=MIN_TARGET_SIZE, le=MAX_TARGET_SIZE,
                       key="target_size")
    padding: int = option(TARGET_PADDING, "empty cells around the target", ge=0, le=MAX_PADDING)
    key_background: bool = option(False, "make the border colour transparent (for opaque images)")

    def __post_init__(self) -> None:
        check_bounds(self, TargetError)


def open_image(source: bytes | str | Path, max_pixels: int | None = None) -> Image.Image:
    """Decode the first frame of an image as RGBA, refusing bombs, truncation and odd formats.

    `max_pixels`: width x height at most; None is MAX_IMAGE_PIXELS (the services' default too).
    """
    max_pixels = MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    fp = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(fp, formats=ALLOWED_FORMATS)
            width, height = img.size
            if width * height > max_pixels:
                raise TargetError(f"image is {width}x{height} pixels; at most {max_pixels:,} pixels are accepted")
            img.seek(0)  # first frame of an animation
            img.load()
    except TargetError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise TargetError("image is too large when decoded (possible decompression bomb)") from exc
    except UnidentifiedImageError as exc:
        raise TargetError(f"not a readable image; upload one of: {', '.join(ALLOWED_FORMATS)}") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise TargetError(f"image file is damaged or truncated ({exc})") from exc
    if min(img.size) < MIN_IMAGE_SIDE:
        raise TargetError(f"image is {img.width}x{img.height}; each side must be at least {MIN_IMAGE_SIDE} pixels")
    has_alpha = img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info
    return img.convert("RGBA") if has_alpha else img.convert("RGB").convert("RGBA")


def key_out_background(img: Image.Image, tolerance: int = KEY_TOLERANCE) -> Image.Image:
    """Make pixels close to the most common border colour transparent."""
    rgba = np.asarray(img, dtype=np.int16).copy()
    border = np.concatenate([rgba[0], rgba[-1], rgba[:, 0], rgba[:, -1]])[:, :3]
    colours, counts = np.unique(border, axis=0, return_counts=True)
    background = colours[counts.argmax()]
    close = np.abs(rgba[..., :3] - background).max(axis=-1) <= tolerance
    rgba[close, 3] = 0
    return Image.fromarray(rgba.astype(np.uint8), "RGBA")


def prepare_target(img: Image.Image, options: TargetOptions = TargetOptions()) -> torch.Tensor:
    """RGBA image -> padded, premultiplied target (4, H, W) float32 in [0, 1]."""
    if options.key_background:
        img = key_out_background(img)
    img = img.copy()
    img.thumbnail((options.size, options.size), Image.LANCZOS)  # keeps the aspect ratio
    if min(img.size) < 2:
        raise TargetError(f"image is too thin: it becomes {img.width}x{img.height} cells; use a less elongated image")
    rgba = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    rgba[:3] *= rgba[3:4]
    if rgba[3].max() <= 0.1:
        raise TargetError("image is (almost) fully transparent: there is nothing to grow")
    p = options.padding
    return torch.nn.functional.pad(rgba, (p, p, p, p)).contiguous()


def load_target(source: bytes | str | Path, options: TargetOptions = TargetOptions(),
                max_pixels: int | None = None) -> torch.Tensor:
    return prepare_target(open_image(source, max_pixels), options)


def target_to_png(target: torch.Tensor, scale: int = 1) -> bytes:
    """The premultiplied RGBA target as an (un-premultiplied) RGBA PNG, each cell `scale` pixels wide."""
    rgba = target.detach().float().cpu().clamp(0, 1).clone()
    alpha = rgba[3:4]
    rgba[:3] = torch.where(alpha > 0, rgba[:3] / alpha.clamp_min(1e-6), torch.zeros_like(rgba[:3])).clamp(0, 1)
    array = (rgba.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
    buf = io.BytesIO()
    upscale(array, scale).save(buf, format="PNG")
    return buf.getvalue()
