"""Target images: aspect ratio, premultiplication, padding, alpha handling, background removal, refusals."""

import io
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from backend.nca.target import TargetError, TargetOptions, load_target, process_target, target_to_png
from tests.helpers import PHOTO_SIZE, PHOTO_SUBJECT, png_bytes, synthetic_photo


def test_thumbnail_keeps_aspect_ratio_and_pads(disc_image):
    t = load_target(png_bytes(disc_image))
    assert t.shape == (4, 20 + 32, 40 + 32)  # 64x32 -> 40x20, padded by 16
    assert t.dtype == torch.float32
    assert torch.count_nonzero(t[:, :16]) == 0 and torch.count_nonzero(t[:, :, -16:]) == 0
    t = load_target(png_bytes(disc_image), TargetOptions(size=16, padding=2))
    assert t.shape == (4, 8 + 4, 16 + 4)


def test_rgb_is_premultiplied_by_alpha():
    img = Image.new("RGBA", (8, 8), (255, 255, 255, 128))
    t = load_target(png_bytes(img), TargetOptions(size=8, padding=0))
    assert torch.allclose(t[3], torch.full((8, 8), 128 / 255), atol=1e-6)
    assert torch.allclose(t[0], t[3], atol=1e-6)  # white * alpha


@pytest.mark.parametrize("fmt", ["JPEG", "BMP", "WEBP"])
def test_images_without_alpha_are_opaque(fmt):
    img = Image.new("RGB", (20, 10), (10, 200, 30))
    t = load_target(png_bytes(img, fmt), TargetOptions(size=20, padding=1, background="keep"))
    assert torch.all(t[3, 1:-1, 1:-1] == 1.0)


def test_key_makes_the_border_colour_transparent():
    img = Image.new("RGB", (20, 20), (255, 255, 255))
    img.paste((0, 0, 255), (5, 5, 15, 15))
    processed = process_target(png_bytes(img), TargetOptions(size=20, padding=0, background="key"))
    t = processed.target
    assert t[3, 0, 0] == 0 and t[3, 10, 10] == 1.0
    assert t[2, 10, 10] == 1.0 and t[0, 10, 10] == 0.0
    assert processed.background == "key" and processed.warning is None
    assert processed.filled == pytest.approx(100 / 400)


def in_ellipse(shape: tuple[int, int], grow: float) -> np.ndarray:
    """Cells of an (h, w) grid inside the ellipse inscribed in it, its radii times `grow`."""
    h, w = shape
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    return ((xs - w / 2) / (grow * w / 2)) ** 2 + ((ys - h / 2) / (grow * h / 2)) ** 2 <= 1


def test_cutout_keeps_the_subject_of_a_photo_and_drops_its_background():
    """A shaded subject on a textured, opaque background: the target is the subject, cropped to it."""
    photo = png_bytes(synthetic_photo(), "JPEG")
    processed = process_target(photo, TargetOptions(size=40, padding=0, background="cutout"))
    assert processed.background == "cutout" and processed.warning is None and not processed.clear_background
    alpha = processed.target[3].numpy()
    left, top, right, bottom = PHOTO_SUBJECT  # cropped to the subject: the grid has its proportions
    assert alpha.shape[1] / alpha.shape[0] == pytest.approx((right - left) / (bottom - top), rel=0.15)
    assert (alpha[in_ellipse(alpha.shape, 0.85)] > 0.9).mean() > 0.97  # the subject, eyes included
    assert (alpha[~in_ellipse(alpha.shape, 1.15)] < 0.1).mean() > 0.9  # the corners are background
    whole = process_target(photo, TargetOptions(size=40, padding=0, background="keep"))
    assert whole.filled == 1.0 and "no transparent background" in whole.warning
    subject_share = np.pi / 4 * (right - left) * (bottom - top) / (PHOTO_SIZE[0] * PHOTO_SIZE[1])
    assert processed.filled < 1.0 and subject_share < 0.25  # of the photo, only the subject is left


def test_auto_cuts_out_opaque_photos_and_keeps_transparent_images(disc_image):
    photo = png_bytes(synthetic_photo())
    auto = process_target(photo, TargetOptions(size=24, padding=2))
    assert auto.background == "cutout"
    assert torch.equal(auto.target, process_target(photo, TargetOptions(size=24, padding=2,
                                                                        background="cutout")).target)
    emoji = process_target(png_bytes(disc_image), TargetOptions(size=24, padding=2))
    assert emoji.background == "keep" and emoji.clear_background and emoji.warning is None


def patchwork(seed: int = 0) -> Image.Image:
    """Random coloured rectangles with random coloured discs in the middle: where GrabCut's start matters."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (160, 120))
    draw = ImageDraw.Draw(img)
    colour = lambda: tuple(int(v) for v in rng.integers(0, 256, 3))  # noqa: E731
    for _ in range(60):
        x, y = rng.integers(0, 160), rng.integers(0, 120)
        draw.rectangle((x, y, x + rng.integers(5, 40), y + rng.integers(5, 40)), fill=colour())
    for _ in range(12):
        x, y = rng.integers(50, 100), rng.integers(35, 75)
        draw.ellipse((x, y, x + 20, y + 20), fill=colour())
    return img


def test_cutout_is_the_same_whatever_opencvs_random_state():
    """GrabCut starts from k-means with OpenCV's per-thread RNG, whose state the API's pooled threads
    carry from one request to the next: the same upload must still give the same target."""
    import cv2

    photo = png_bytes(patchwork())
    options = TargetOptions(size=32, padding=4, background="cutout")
    targets = []
    for state in (1, 2, 3):
        cv2.setRNGSeed(state)
        targets.append(process_target(photo, options).target)
    with ThreadPoolExecutor(2) as pool:
        targets += pool.map(lambda _: process_target(photo, options).target, range(2))
    assert all(t.shape == targets[0].shape and torch.equal(t, targets[0]) for t in targets)


@pytest.mark.parametrize(("image", "seconds", "words"), [
    (synthetic_photo().resize((4000, 3000)), 0.0, "did not finish within 0 s"),  # a big photo, no time
    (Image.new("RGB", (90, 60), (200, 30, 30)), 10.0, "no subject stood out"),
], ids=["out-of-time", "no-subject"])
def test_cutout_falls_back_to_the_whole_image_with_a_warning(image, seconds, words):
    data = png_bytes(image)
    processed = process_target(data, TargetOptions(size=24, padding=2, background="cutout", cutout_seconds=seconds))
    assert processed.background == "keep" and words in processed.warning and "whole image" in processed.warning
    assert torch.equal(processed.target, load_target(data, TargetOptions(size=24, padding=2, background="keep")))


def test_keying_a_busy_background_warns():
    """Noise has no one border colour: keying clears next to nothing, which the user is told."""
    img = Image.frombytes("RGB", (64, 48), np.random.default_rng(0).integers(0, 256, 64 * 48 * 3, np.uint8).tobytes())
    processed = process_target(png_bytes(img), TargetOptions(size=24, padding=2, background="key"))
    assert processed.background == "key" and "not one plain colour" in processed.warning


def test_gif_uses_the_first_frame():
    frames = [Image.new("P", (10, 10), i) for i in (1, 2)]
    for f, colour in zip(frames, [(255, 0, 0), (0, 255, 0)], strict=True):
        f.putpalette([0, 0, 0, *colour, *colour] + [0] * 759)
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    t = load_target(buf.getvalue(), TargetOptions(size=10, padding=0))
    assert t[0, 5, 5] > 0.9 and t[1, 5, 5] < 0.1


def _bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header claiming a huge size, with a tiny compressed body."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 6, 0, 0, 0])
    body = chunk(b"IDAT", zlib.compress(b"\0" * 1000))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + body + chunk(b"IEND", b"")


@pytest.mark.parametrize(("data", "message"), [
    (b"", "not a readable image"),
    (b"hello, I am text", "not a readable image"),
    (_bomb_png(8000, 6000), "at most 40,000,000 pixels"),
    (_bomb_png(100000, 100000), "decompression bomb"),
], ids=["empty", "text", "too-many-pixels", "bomb"])
def test_refuses_unreadable_and_bomb_files(data, message):
    with pytest.raises(TargetError, match=message):
        load_target(data)


def test_refuses_truncated_files(disc_image):
    data = png_bytes(disc_image)
    with pytest.raises(TargetError, match="damaged or truncated"):
        load_target(data[: len(data) // 2])


def test_refuses_empty_tiny_and_thin_images():
    with pytest.raises(TargetError, match="transparent"):
        load_target(png_bytes(Image.new("RGBA", (32, 32), (255, 0, 0, 0))))
    with pytest.raises(TargetError, match="at least"):
        load_target(png_bytes(Image.new("RGBA", (3, 30), (255, 0, 0, 255))))
    with pytest.raises(TargetError, match="thin"):
        load_target(png_bytes(Image.new("RGBA", (400, 10), (255, 0, 0, 255))))


@pytest.mark.parametrize("options", [dict(size=4), dict(size=1000), dict(padding=-1), dict(padding=500),
                                     dict(background="remove")])
def test_refuses_absurd_sizes(options):
    with pytest.raises(TargetError):
        TargetOptions(**options)


def test_target_png_round_trip(disc_image):
    t = load_target(png_bytes(disc_image), TargetOptions(size=16, padding=2))
    again = load_target(target_to_png(t), TargetOptions(size=64, padding=0))
    assert again.shape == t.shape
    assert torch.allclose(again, t, atol=2 / 255)
