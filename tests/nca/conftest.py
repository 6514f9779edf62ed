import pytest
from PIL import Image, ImageDraw


@pytest.fixture
def disc_image() -> Image.Image:
    """A red disc on a transparent 64x32 canvas (non-square on purpose)."""
    img = Image.new("RGBA", (64, 32), (0, 0, 0, 0))
    ImageDraw.Draw(img).ellipse((16, 0, 47, 31), fill=(255, 0, 0, 255))
    return img
