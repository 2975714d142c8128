"""A perceptual hash of fundus pictures, shared by the anonymizer (of each clean image) and
the pdf-parser (of each tile printed in a report), so a report's tile finds its capture.

Difference hash over the central part of the picture: the corners (where cameras burn in
text and the anonymizer masks it) and the size or compression of the copy do not matter;
two different eyes differ in about half the bits, a tile and its capture in few.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

__all__ = ["HASH_BITS", "fundus_phash", "hamming", "same_picture"]

SIDE = 16  # a 16 x 16 difference grid: 256 bits
HASH_BITS = SIDE * SIDE
CENTRE = 0.7  # the share of the width and height that is hashed, around the centre
MATCH_BITS = HASH_BITS // 5  # at most this many bits differ between a tile and its capture


def fundus_phash(image: Image.Image) -> str:
    """The hash as hex (64 characters)."""
    grey = image.convert("L")
    width, height = grey.size
    margin_x, margin_y = width * (1 - CENTRE) / 2, height * (1 - CENTRE) / 2
    centre = grey.crop((margin_x, margin_y, width - margin_x, height - margin_y))
    small = np.asarray(centre.resize((SIDE + 1, SIDE), Image.Resampling.BOX), dtype=np.int16)
    bits = (small[:, 1:] > small[:, :-1]).flatten()
    value = int("".join("1" if b else "0" for b in bits), 2)
    return f"{value:0{HASH_BITS // 4}x}"


def hamming(a: str, b: str) -> int:
    return (int(a, 16) ^ int(b, 16)).bit_count()


def same_picture(a: str, b: str) -> bool:
    return hamming(a, b) <= MATCH_BITS
