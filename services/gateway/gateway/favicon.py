"""The site's icon, drawn once in code (an eye in the brand's blue), served as /favicon.ico."""

from __future__ import annotations

import io
from functools import cache

from PIL import Image, ImageDraw

__all__ = ["favicon_ico"]

_BLUE = (28, 94, 168, 255)  # --primary in app.css


@cache
def favicon_ico() -> bytes:
    size = 64
    image = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    draw.ellipse((4, 16, 60, 48), fill=_BLUE)  # the eye
    draw.ellipse((20, 18, 44, 46), fill=(255, 255, 255, 255))  # the iris' ring
    draw.ellipse((26, 24, 38, 40), fill=_BLUE)  # the pupil
    out = io.BytesIO()
    image.save(out, format="ICO", sizes=[(16, 16), (32, 32), (48, 48)])
    return out.getvalue()
