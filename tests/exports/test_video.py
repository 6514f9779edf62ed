"""Videos of growth, a cut and regrowth: they decode (with the library that wrote them) to the frames asked for."""

import numpy as np
import pytest
import torch

from backend.exports.video import (
    LIMITS,
    MP4_MIN_SCALE,
    VideoLimitError,
    decode_frames,
    encode,
    regrowth_frames,
    render_video,
)
from backend.nca import modelfile
from backend.nca.modelfile import ModelFile, ModelInfo
from backend.nca.render import growth_frames
from tests.conftest import REPO_ROOT
from tests.nca.test_render import growing_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("fmt", ["gif", "webp", "mp4"])
@pytest.mark.parametrize(("height", "width", "scale"), [(12, 16, 3), (9, 7, 1)], ids=["even", "odd"])
def test_each_format_decodes_to_the_frames_it_was_given(fmt, height, width, scale):
    frames = growth_frames(growing_model(), height, width, 12, generator=torch.Generator().manual_seed(0))
    decoded = decode_frames(encode(frames, fmt, scale=scale), fmt)
    assert len(decoded) == len(frames) == 13
    if fmt == "mp4":  # H.264 (yuv420p): cells of at least 2 x 2 pixels, even sides (one white row/column added)
        scale = max(scale, MP4_MIN_SCALE)
    h, w = height * scale, width * scale
    assert decoded[0].shape == (h + h % 2, w + w % 2, 3) if fmt == "mp4" else (h, w, 3)
    want = np.repeat(np.repeat(frames[-1], scale, 0), scale, 1)
    error = np.abs(decoded[-1][:h, :w].astype(int) - want)
    if fmt == "mp4":  # lossy: close on average (this noisy test pattern ~7; a shipped model's frames ~1)
        assert error.mean() < 10
    else:  # WebP is lossless; GIF has a 256-colour palette for this handful of colours
        assert error.max() <= {"gif": 8, "webp": 0}[fmt]


def test_the_video_grows_is_cut_and_regrows():
    mf = modelfile.load(REPO_ROOT / "models" / "heart.safetensors")
    frames = regrowth_frames(mf, 150)
    painted = [(f < 200).any(axis=-1).mean() for f in frames]
    assert len(frames) == 151 and painted[0] < 0.01
    assert painted[51] < painted[50] * 0.85  # the centre cut, after a third of the steps (shown from step 51)
    assert painted[150] > painted[51] * 1.1 and abs(painted[150] - painted[50]) < 0.05  # regrown


def test_limits_are_named_in_the_error():
    mf = ModelFile(growing_model(), ModelInfo(grid_height=72, grid_width=72))
    with pytest.raises(VideoLimitError, match=str(LIMITS.max_steps)):
        render_video(mf, "gif", steps=LIMITS.max_steps + 1)
    with pytest.raises(VideoLimitError, match="1024"):
        render_video(mf, "mp4", steps=10, scale=15)
    with pytest.raises(VideoLimitError, match="mp4"):
        render_video(mf, "avi", steps=10)


def test_long_videos_keep_at_most_max_frames():
    mf = ModelFile(growing_model(), ModelInfo(grid_height=8, grid_width=8))
    frames = regrowth_frames(mf, 1200)
    assert len(frames) <= LIMITS.max_frames + 1
