"""Is a capture worth grading? Spot the failed ones: a frame that is nearly black (the flash
did not fire, the lens cap was on) or blank (a uniform grey or white frame: no retina in it).

Pure: a decoded picture in, flags out. Measured on a copy at most `_SIDE` pixels across,
inside the field of view when one was found (the black surround says nothing), using the
brightest channel per pixel: a fundus is red-dominated, so the luminance of a dim but real
photo is low while its red channel is not.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageChops, ImageFilter

if TYPE_CHECKING:
    from anonymizer.fundus import FieldOfView

__all__ = ["NOT_GRADABLE", "capture_flags"]

NOT_GRADABLE = "Image not gradable"

_SIDE = 256
# The inner part of the field of view that is measured: its rim is vignetted by every camera.
_INNER = 0.9
# Nearly black: 95 % of the field of view darker than this (brightest channel, 0-255). Its
# 95th percentile, measured on synthetic fundus photos (testkit.synthetic, 8 seeds): 187-214;
# the same dimmed to 40 % (dark but gradable) 75-85, to 20 % 37-42; a frame at 15 % or less
# (no field of view is found then, the whole frame counts) 28-31.
_DARK_P95 = 32.0
# Blank: the brightest channel spans less than this between its 5th and 95th percentile,
# after a blur that removes sensor noise and JPEG blocking. A fundus spans 75-90 (vignetting,
# macula, optic disc, vessels), one dimmed to 20 % still 15-17; a uniform frame 0-3, with
# sensor noise (sigma 6) too.
_MIN_SPREAD = 10.0
_BLUR_RADIUS = 2.0


def capture_flags(image: Image.Image, fov: FieldOfView | None = None) -> tuple[str, ...]:
    """``(NOT_GRADABLE,)`` for a nearly black or blank capture, else ``()``.

    `fov` is the field of view in `image`'s pixel coordinates, or None (the whole frame is
    measured)."""
    width, height = image.size
    factor = max(1, math.ceil(max(width, height) / _SIDE))
    small = image.convert("RGB").reduce(factor) if factor > 1 else image.convert("RGB")
    red, green, blue = small.split()
    brightest = ImageChops.lighter(ImageChops.lighter(red, green), blue)
    blurred = np.asarray(brightest.filter(ImageFilter.GaussianBlur(_BLUR_RADIUS)), np.float64)
    values = blurred
    if fov is not None:
        ys, xs = np.ogrid[0 : blurred.shape[0], 0 : blurred.shape[1]]
        distance = np.hypot((xs + 0.5) * factor - fov.centre_x, (ys + 0.5) * factor - fov.centre_y)
        inside = distance < fov.radius * _INNER
        if inside.sum() >= 16:
            values = blurred[inside]
    low, high = (float(p) for p in np.percentile(values, (5, 95)))
    if high < _DARK_P95 or high - low < _MIN_SPREAD:
        return (NOT_GRADABLE,)
    return ()
