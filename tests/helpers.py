"""Small helpers shared by tests (import as `tests.helpers`)."""

import io

from PIL import Image


def png_bytes(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()
