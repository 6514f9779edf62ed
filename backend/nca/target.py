"""Target images: load safely, remove an opaque photo's background, thumbnail, premultiply, pad.

The article's targets are emoji: a subject on a transparent background (docs/nca-spec.md, "The
target"). A
photo has no transparency, so as it is the pattern would have to fill the whole rectangle, which
the method learns poorly (a blob, then noise). `background` says what to do about it:

- `cutout`: cut the subject out (OpenCV's GrabCut, started from "the border is background, the
  middle may be the subject") and crop to it. It runs on a copy at most CUTOUT_SIDE pixels wide,
  within `cutout_seconds`; past that, or when no subject stands out, the whole image is used and
  the result carries a warning that says so.
- `key`: make the most common border colour transparent (a drawing on a plain background).
- `keep`: use the image as it is.
- `auto` (the default): `cutout` for images without a transparent background, else `keep`.
"""

from __future__ import annotations

import io
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .model import ALIVE_THRESHOLD, TARGET_PADDING, TARGET_SIZE
from .options import check_bounds, option
from .render import upscale

MIN_TARGET_SIZE, MAX_TARGET_SIZE = 8, 128
MAX_PADDING = 64
MIN_IMAGE_SIDE = 4  # a thinner image has nothing to learn
MAX_IMAGE_PIXELS = 40_000_000  # decoded pixels; more is treated as a decompression bomb
ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
KEY_TOLERANCE = 24  # max per-channel difference (0-255) from the background colour to key out

Background = Literal["auto", "cutout", "key", "keep"]
BACKGROUNDS: tuple[str, ...] = get_args(Background)
CUTOUT_SECONDS = 10.0  # time limit of one cut-out; past it the whole image is used
CUTOUT_SIDE = 256  # GrabCut runs on a copy at most this big (the target is at most 128 cells wide)
CUTOUT_OUTPUT_SIDE = 2 * MAX_TARGET_SIZE  # the cropped subject is kept at most this big for the thumbnail
CUTOUT_ITERATIONS = 5  # GrabCut rounds (each re-fits the colour models and re-cuts)
CUTOUT_MARGIN = 0.05  # this share of each side, along the border, is taken as background for sure
CUTOUT_MIN_SUBJECT = 0.02  # a smaller cut-out (share of the picture) means no subject was found
CUTOUT_MAX_SUBJECT = 0.97  # a bigger one means there was no background to remove
CUTOUT_HOLE = 0.05  # holes in the subject smaller than this share of it are filled (a glint, an eye)
CLEAR_BACKGROUND = 0.5  # an image whose border is at least this transparent already has a clear background
KEY_WORK_SIDE = 1024  # keying runs on a copy at most this big (the target is at most 128 cells wide)
WEAK_KEY = 0.25  # keying that empties less of an opaque picture's cells did not find a plain background


class TargetError(ValueError):
    """The image cannot be used as a target; the message says why and what to do."""


@dataclass(frozen=True)
class TargetOptions:
    """How an image becomes a target; its fields made with `option` are job options (backend.nca.options)."""

    size: int = option(TARGET_SIZE, "longer side of the target in cells", ge=MIN_TARGET_SIZE, le=MAX_TARGET_SIZE,
                       key="target_size")
    padding: int = option(TARGET_PADDING, "empty cells around the target", ge=0, le=MAX_PADDING)
    background: Background = option(
        "auto", "what happens to the image's background: `cutout` cuts the subject out and crops to it, `key` makes "
        "the border colour transparent, `keep` leaves the image as it is; `auto`: `cutout` for an image without a "
        "transparent background, else `keep`", since=3)
    cutout_seconds: float = CUTOUT_SECONDS  # time limit of the subject cut-out: the server's setting, not a job option

    def __post_init__(self) -> None:
        check_bounds(self, TargetError)
        if self.background not in BACKGROUNDS:
            raise TargetError(f"background must be one of {', '.join(BACKGROUNDS)}")


@dataclass(frozen=True)
class ProcessedTarget:
    """A target and how it was made, for the preview, the job record and the CLI."""

    target: torch.Tensor  # (4, H, W) float32 in [0, 1], premultiplied, padded
    background: Literal["cutout", "key", "keep"]  # what was done to the background
    clear_background: bool  # the image came with a transparent background
    warning: str | None = None  # something the user should know (a fallback, a target likely to train badly)

    @property
    def filled(self) -> float:
        """Share of the grid's cells the pattern has to fill (alpha above the alive threshold)."""
        return float((self.target[3] > ALIVE_THRESHOLD).float().mean())


class CutoutFailed(Exception):
    """The cut-out gave nothing usable; the message (for the user) says why."""


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


def has_clear_background(img: Image.Image) -> bool:
    """True when most of the border is transparent: the subject already stands on nothing."""
    alpha = np.asarray(img.getchannel("A"))
    border = np.concatenate([alpha[0], alpha[-1], alpha[:, 0], alpha[:, -1]])
    return float((border < 128).mean()) >= CLEAR_BACKGROUND


def key_out_background(img: Image.Image, tolerance: int = KEY_TOLERANCE) -> Image.Image:
    """Make pixels close to the most common border colour transparent."""
    rgba = np.asarray(img, dtype=np.int16).copy()
    border = np.concatenate([rgba[0], rgba[-1], rgba[:, 0], rgba[:, -1]])[:, :3]
    colours, counts = np.unique(border, axis=0, return_counts=True)
    background = colours[counts.argmax()]
    close = np.abs(rgba[..., :3] - background).max(axis=-1) <= tolerance
    rgba[close, 3] = 0
    return Image.fromarray(rgba.astype(np.uint8), "RGBA")


def cut_out_subject(img: Image.Image, seconds: float = CUTOUT_SECONDS) -> Image.Image:
    """The subject of a photo on a transparent background, cropped to it; CutoutFailed if none.

    GrabCut on a copy at most CUTOUT_SIDE wide: the border strip is background for sure, the rest
    starts as probably the subject, and each round re-fits both colour models and re-cuts. The
    largest piece (and pieces nearly as large) is kept, its holes filled, its edge softened. The
    deadline is checked between the steps; no step takes long at that size.
    """
    import cv2  # only the cut-out needs OpenCV; `nca` stays quick to import

    deadline = time.monotonic() + seconds

    def in_time() -> None:
        if time.monotonic() > deadline:
            raise CutoutFailed(f"the subject cut-out did not finish within {seconds:g} s")

    in_time()
    work = img.convert("RGB")
    work.thumbnail((CUTOUT_SIDE, CUTOUT_SIDE), Image.LANCZOS)
    bgr = np.ascontiguousarray(np.asarray(work)[:, :, ::-1])
    h, w = bgr.shape[:2]
    margin = max(1, round(CUTOUT_MARGIN * min(h, w)))
    mask = np.full((h, w), cv2.GC_BGD, np.uint8)
    mask[margin:h - margin, margin:w - margin] = cv2.GC_PR_FGD
    models = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(0)  # GrabCut seeds its colour models with k-means: the same photo, the same cut
    for round_ in range(CUTOUT_ITERATIONS):
        in_time()
        mode = cv2.GC_INIT_WITH_MASK if round_ == 0 else cv2.GC_EVAL
        cv2.grabCut(bgr, mask, None, *models, 1, mode)
    in_time()
    subject = _main_pieces(((mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)).astype(np.uint8), cv2)
    share = float(subject.mean())
    if share < CUTOUT_MIN_SUBJECT:
        raise CutoutFailed("no subject stood out from the background")
    if share > CUTOUT_MAX_SUBJECT:
        raise CutoutFailed("there was no background to remove")
    alpha = cv2.GaussianBlur(subject.astype(np.float32), (0, 0), 0.7)  # a soft edge, as a drawn emoji has
    ys, xs = np.nonzero(subject)
    pad = max(1, round(0.02 * max(h, w)))  # crop to the subject, keeping its soft edge
    box = (max(xs.min() - pad, 0), max(ys.min() - pad, 0), min(xs.max() + 1 + pad, w), min(ys.max() + 1 + pad, h))
    sx, sy = img.width / w, img.height / h  # back to the original's pixels, for full detail in the crop
    crop = img.crop((round(box[0] * sx), round(box[1] * sy), round(box[2] * sx), round(box[3] * sy))).convert("RGB")
    crop.thumbnail((CUTOUT_OUTPUT_SIDE, CUTOUT_OUTPUT_SIDE), Image.LANCZOS)
    alpha = cv2.resize(alpha[box[1]:box[3], box[0]:box[2]], crop.size, interpolation=cv2.INTER_LINEAR)
    in_time()
    crop.putalpha(Image.fromarray((np.clip(alpha, 0, 1) * 255 + 0.5).astype(np.uint8), "L"))
    return crop


def _main_pieces(subject: np.ndarray, cv2) -> np.ndarray:
    """The largest connected piece and any at least a fifth its size, their small holes filled."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(subject, connectivity=8)
    if count <= 1:
        return subject
    areas = stats[1:, cv2.CC_STAT_AREA]
    kept = np.isin(labels, np.flatnonzero(areas >= areas.max() / 5) + 1)
    gaps = np.pad(~kept, 1, constant_values=True).astype(np.uint8)  # the frame joins everything outside
    count, labels, stats, _ = cv2.connectedComponentsWithStats(gaps, connectivity=4)
    small = np.flatnonzero(stats[:, cv2.CC_STAT_AREA] < CUTOUT_HOLE * kept.sum())
    holes = np.isin(labels, small[small != labels[0, 0]])[1:-1, 1:-1]
    return (kept | holes).astype(np.uint8)


def remove_background(img: Image.Image, options: TargetOptions, clear: bool) -> tuple[Image.Image, str, str | None]:
    """(image, what was done: cutout | key | keep, a warning or None); `clear`: has_clear_background(img)."""
    background = options.background
    if background == "auto":
        background = "keep" if clear else "cutout"
    if background == "cutout":
        try:
            return cut_out_subject(img, options.cutout_seconds), "cutout", None
        except CutoutFailed as exc:
            return img, "keep", (f"{exc}, so the whole image is used: the pattern has to fill the rectangle. "
                                 "Crop the photo around its subject or give it a transparent background.")
    if background == "key":
        img = img.copy()
        img.thumbnail((KEY_WORK_SIDE, KEY_WORK_SIDE), Image.LANCZOS)  # a 40-megapixel photo took 9 s of CPU
        keyed = key_out_background(img)
        cells = keyed.copy()  # judged at the target's size: keyed specks of a busy background do not count
        cells.thumbnail((options.size, options.size), Image.LANCZOS)
        cleared = float((np.asarray(cells.getchannel("A")) <= 255 * ALIVE_THRESHOLD).mean())
        warning = None
        if not clear and cleared < WEAK_KEY:
            warning = (f"making the border colour transparent emptied only {cleared:.0%} of the image: its "
                       "background is not one plain colour. Cut out the subject instead.")
        return keyed, "key", warning
    warning = None if clear else ("the image has no transparent background, so the pattern has to fill the whole "
                                  "rectangle; the method learns a subject on a clear background far better "
                                  "(cut out the subject).")
    return img, "keep", warning


def prepare_target(img: Image.Image, options: TargetOptions = TargetOptions()) -> ProcessedTarget:
    """RGBA image -> the padded, premultiplied target (4, H, W) and how its background was treated."""
    clear = has_clear_background(img)
    img, background, warning = remove_background(img, options, clear)
    img = img.copy()
    img.thumbnail((options.size, options.size), Image.LANCZOS)  # keeps the aspect ratio
    if min(img.size) < 2:
        raise TargetError(f"image is too thin: it becomes {img.width}x{img.height} cells; use a less elongated image")
    rgba = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    rgba[:3] *= rgba[3:4]
    if rgba[3].max() <= 0.1:
        raise TargetError("image is (almost) fully transparent: there is nothing to grow")
    p = options.padding
    target = torch.nn.functional.pad(rgba, (p, p, p, p)).contiguous()
    return ProcessedTarget(target, background, clear, warning)  # type: ignore[arg-type]


def process_target(source: bytes | str | Path, options: TargetOptions = TargetOptions(),
                   max_pixels: int | None = None) -> ProcessedTarget:
    return prepare_target(open_image(source, max_pixels), options)


def load_target(source: bytes | str | Path, options: TargetOptions = TargetOptions(),
                max_pixels: int | None = None) -> torch.Tensor:
    """Just the target tensor (process_target also says how the background was treated)."""
    return process_target(source, options, max_pixels).target


def target_to_png(target: torch.Tensor, scale: int = 1) -> bytes:
    """The premultiplied RGBA target as an (un-premultiplied) RGBA PNG, each cell `scale` pixels wide."""
    rgba = target.detach().float().cpu().clamp(0, 1).clone()
    alpha = rgba[3:4]
    rgba[:3] = torch.where(alpha > 0, rgba[:3] / alpha.clamp_min(1e-6), torch.zeros_like(rgba[:3])).clamp(0, 1)
    array = (rgba.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
    buf = io.BytesIO()
    upscale(array, scale).save(buf, format="PNG")
    return buf.getvalue()
