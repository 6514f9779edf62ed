"""Videos of a model: growth from the seed, a cut through the grown pattern, regrowth.

GIF (Pillow), animated WebP (Pillow, lossless) and MP4 (H.264 through PyAV's libx264). Frames come
from `render.growth_frames`; each cell is a crisp square of `scale` x `scale` pixels. Every size is
capped (`VideoLimits`) because the API renders on request: a request past a cap gets a
`VideoLimitError` that names the cap.
"""

from __future__ import annotations

import io
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from backend.nca.evaluate import ALIVE_THRESHOLD, centre_cut
from backend.nca.modelfile import ModelFile
from backend.nca.render import Disc, growth_frames, save_gif, upscale

FORMATS = {"gif": "image/gif", "webp": "image/webp", "mp4": "video/mp4"}
DEFAULT_STEPS = 300
DEFAULT_SCALE = 4
FRAME_MS = 40  # 25 frames per second
VIDEO_SEED = 0  # the same model gives the same video
MP4_MIN_SCALE = 2  # pixels per cell in an MP4 at least (H.264's yuv420p halves the colour resolution)


class VideoLimitError(ValueError):
    """A video request past one of the caps; the message names it."""


@dataclass(frozen=True)
class VideoLimits:
    max_steps: int = 2000  # CA steps in one video
    max_scale: int = 16  # pixels per cell
    max_side: int = 1024  # pixels of the video's longer side
    max_frames: int = 500  # more steps than this are shown every k-th step


LIMITS = VideoLimits()


def check_request(height: int, width: int, steps: int, scale: int, limits: VideoLimits = LIMITS) -> None:
    if not 1 <= steps <= limits.max_steps:
        raise VideoLimitError(f"steps must be between 1 and {limits.max_steps}, not {steps}")
    if not 1 <= scale <= limits.max_scale:
        raise VideoLimitError(f"scale must be between 1 and {limits.max_scale}, not {scale}")
    if max(height, width) * scale > limits.max_side:
        raise VideoLimitError(f"the video would be {width * scale}x{height * scale} pixels; at most {limits.max_side} "
                              f"a side: use scale {max(1, limits.max_side // max(height, width))} or less")


def pattern_centre_cut(x: torch.Tensor) -> Disc:
    """The card's centre cut, placed on the live pattern of the state (grid centre if none is alive)."""
    alive = x[0, 3] > ALIVE_THRESHOLD
    rows, cols = alive.any(1).nonzero(), alive.any(0).nonzero()
    if rows.numel() == 0:
        return x.shape[3] / 2, x.shape[2] / 2, 2.0
    return centre_cut((int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1))


def regrowth_frames(mf: ModelFile, steps: int = DEFAULT_STEPS, limits: VideoLimits = LIMITS) -> list[np.ndarray]:
    """RGB frames: growth from the seed, the centre of the pattern cut out after a third of the steps,
    regrowth; every k-th step so that there are at most `limits.max_frames` frames."""
    every = max(1, math.ceil(steps / limits.max_frames))
    generator = torch.Generator(next(mf.model.parameters()).device).manual_seed(VIDEO_SEED)
    return growth_frames(mf.model, mf.info.grid_height, mf.info.grid_width, steps, every=every,
                         damage_at=steps // 3, damage=pattern_centre_cut, generator=generator)


def encode(frames: Sequence[np.ndarray], fmt: str, scale: int = DEFAULT_SCALE, frame_ms: int = FRAME_MS) -> bytes:
    """RGB uint8 frames -> the bytes of a GIF, animated WebP or MP4 file."""
    buf = io.BytesIO()
    if fmt == "gif":
        save_gif(frames, buf, scale=scale, frame_ms=frame_ms)
    elif fmt == "webp":
        images = [upscale(f, scale) for f in frames]
        images[0].save(buf, format="WEBP", save_all=True, append_images=images[1:], duration=frame_ms, loop=0,
                       lossless=True, quality=60, method=3)
    elif fmt == "mp4":
        _encode_mp4(frames, buf, scale, frame_ms)
    else:
        raise VideoLimitError(f"unknown video format {fmt!r}: use one of {', '.join(FORMATS)}")
    return buf.getvalue()


def _encode_mp4(frames: Sequence[np.ndarray], buf: io.BytesIO, scale: int, frame_ms: int) -> None:
    """H.264 in MP4, yuv420p (what browsers and phones play). yuv420p keeps colour at half resolution, so
    a cell is at least 2 x 2 pixels (one colour sample each); an odd side gets one white row/column."""
    import av  # only the MP4 path needs PyAV

    scale = max(scale, MP4_MIN_SCALE)
    h, w = frames[0].shape[0] * scale, frames[0].shape[1] * scale
    even_h, even_w = h + h % 2, w + w % 2
    # A real file: "faststart" (the index first, so a browser plays while it downloads) rewrites it at the end.
    with tempfile.TemporaryDirectory(prefix="nca-video-") as tmp:
        path = Path(tmp) / "video.mp4"
        _write_mp4(av, frames, path, scale, h, w, even_h, even_w, frame_ms)
        buf.write(path.read_bytes())


def _write_mp4(av, frames: Sequence[np.ndarray], path: Path, scale: int, h: int, w: int, even_h: int,  # noqa: ANN001
               even_w: int, frame_ms: int) -> None:
    with av.open(str(path), mode="w", format="mp4", options={"movflags": "+faststart"}) as container:
        stream = container.add_stream("libx264", rate=round(1000 / frame_ms))
        stream.width, stream.height, stream.pix_fmt = even_w, even_h, "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast"}
        canvas = np.full((even_h, even_w, 3), 255, dtype=np.uint8)
        for frame in frames:
            canvas[:h, :w] = np.asarray(upscale(frame, scale))
            for packet in stream.encode(av.VideoFrame.from_ndarray(canvas, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def render_video(mf: ModelFile, fmt: str, steps: int = DEFAULT_STEPS, scale: int = DEFAULT_SCALE,
                 limits: VideoLimits = LIMITS) -> bytes:
    """Growth, cut and regrowth of `mf` as a `fmt` file ("gif", "webp" or "mp4"), within the limits."""
    if fmt not in FORMATS:
        raise VideoLimitError(f"unknown video format {fmt!r}: use one of {', '.join(FORMATS)}")
    check_request(mf.info.grid_height, mf.info.grid_width, steps, scale, limits)
    return encode(regrowth_frames(mf, steps, limits), fmt, scale)


def decode_frames(data: bytes, fmt: str) -> list[np.ndarray]:
    """Read a video back into RGB frames (with the library that wrote it): for tests and checks."""
    if fmt == "mp4":
        import av

        with av.open(io.BytesIO(data)) as container:
            return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    with Image.open(io.BytesIO(data)) as img:
        frames = []
        for i in range(getattr(img, "n_frames", 1)):
            img.seek(i)
            frames.append(np.asarray(img.convert("RGB")))
        return frames
