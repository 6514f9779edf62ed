"""Target images: aspect ratio, premultiplication, padding, alpha handling and refusals."""

import io
import zlib

import pytest
import torch
from PIL import Image

from backend.nca.target import TargetError, TargetOptions, load_target, target_to_png
from tests.helpers import png_bytes


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
    t = load_target(png_bytes(img, fmt), TargetOptions(size=20, padding=1))
    assert torch.all(t[3, 1:-1, 1:-1] == 1.0)


def test_key_background_makes_the_border_colour_transparent():
    img = Image.new("RGB", (20, 20), (255, 255, 255))
    img.paste((0, 0, 255), (5, 5, 15, 15))
    t = load_target(png_bytes(img), TargetOptions(size=20, padding=0, key_background=True))
    assert t[3, 0, 0] == 0 and t[3, 10, 10] == 1.0
    assert t[2, 10, 10] == 1.0 and t[0, 10, 10] == 0.0


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


@pytest.mark.parametrize("options", [dict(size=4), dict(size=1000), dict(padding=-1), dict(padding=500)])
def test_refuses_absurd_sizes(options):
    with pytest.raises(TargetError):
        TargetOptions(**options)


def test_target_png_round_trip(disc_image):
    t = load_target(png_bytes(disc_image), TargetOptions(size=16, padding=2))
    again = load_target(target_to_png(t), TargetOptions(size=64, padding=0))
    assert again.shape == t.shape
    assert torch.allclose(again, t, atol=2 / 255)
