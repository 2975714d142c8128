"""OCR of a rendered report page: prepare the pixels so Tesseract sees every line, run it, and
turn its TSV into words with boxes.

Measured on Remidio pages (2 cores): plain greyscale loses the green and red sentences (their
luminance is close to the white page's after Tesseract's own binarisation), so each pixel
takes the darkest of R, G and B; the white-on-green title and the white RE/LE badges are dark
rectangles with light letters, inverted here so the letters come out dark on light. Tesseract
runs on one thread (OMP_THREAD_LIMIT=1): 0.7-1.2 s a page at 200 DPI, slower with its default
threads on two cores.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from pdf_parser.layout import Box, Line, Word

__all__ = [
    "DPI",
    "OcrError",
    "TesseractFailed",
    "TesseractMissing",
    "badges_in",
    "darkest_channel",
    "invert_dark_regions",
    "parse_tsv",
    "prepare_page",
    "run_tesseract",
    "with_badge_strip",
]

DPI = 200
Grey = NDArray[np.uint8]

_DARK = 110  # a pixel darker than this (of 255) belongs to ink or a filled region
_BLOCK = 8  # dark regions are found on a grid of 8 x 8 pixel blocks (1 mm at 200 DPI)
_LIGHT_LETTER = 170  # inside a picture tile, badge letters are lighter than any fundus pixel


class OcrError(Exception):
    """OCR could not run or failed."""


class TesseractMissing(OcrError):
    def __init__(self, binary: str) -> None:
        super().__init__(
            f"tesseract not found ({binary!r}): install it (Debian: apt-get install tesseract-ocr)"
        )


class TesseractFailed(OcrError):
    pass


def darkest_channel(pixels: NDArray[np.uint8]) -> Grey:
    """Per pixel the darkest of its colour channels (any order: BGR, RGB, BGRA's first 3)."""
    if pixels.ndim == 2:
        return pixels
    # Pairwise minimum: 10 x faster than .min(axis=2) over interleaved channels.
    return np.minimum(np.minimum(pixels[..., 0], pixels[..., 1]), pixels[..., 2])


def _dark_components(solid: NDArray[np.bool_]) -> list[tuple[int, int, int, int]]:
    """Bounding boxes (r0, r1, c0, c1, exclusive ends) of 4-connected groups of True blocks."""
    seen = np.zeros_like(solid)
    boxes = []
    for start_r, start_c in np.argwhere(solid):
        if seen[start_r, start_c]:
            continue
        stack = [(int(start_r), int(start_c))]
        seen[start_r, start_c] = True
        r0, r1, c0, c1, count = start_r, start_r, start_c, start_c, 0
        while stack:
            r, c = stack.pop()
            count += 1
            r0, r1, c0, c1 = min(r0, r), max(r1, r), min(c0, c), max(c1, c)
            for nr, nc in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
                if (
                    0 <= nr < solid.shape[0]
                    and 0 <= nc < solid.shape[1]
                    and solid[nr, nc]
                    and not seen[nr, nc]
                ):
                    seen[nr, nc] = True
                    stack.append((nr, nc))
        height, width = r1 - r0 + 1, c1 - c0 + 1
        # A filled rectangle (banner, badge), not a thick stroke of a letter.
        if height >= 2 and width >= 3 and count >= 0.6 * height * width:
            boxes.append((int(r0), int(r1) + 1, int(c0), int(c1) + 1))
    return boxes


def invert_dark_regions(grey: Grey) -> Grey:
    """`grey` with every filled dark rectangle inverted: light letters on a dark banner or
    badge become dark letters on light, as Tesseract reads best."""
    out = grey.copy()
    rows, cols = grey.shape[0] // _BLOCK, grey.shape[1] // _BLOCK
    dark = grey[: rows * _BLOCK, : cols * _BLOCK] < _DARK
    share = dark.reshape(rows, _BLOCK, cols, _BLOCK).mean(axis=(1, 3))
    for r0, r1, c0, c1 in _dark_components(share > 0.9):
        # The block grid only approximates the region: find its exact edges in pixels, as the
        # rows and columns (one block around it) that are mostly dark.
        y0, y1 = max(0, (r0 - 1) * _BLOCK), min(grey.shape[0], (r1 + 1) * _BLOCK)
        x0, x1 = max(0, (c0 - 1) * _BLOCK), min(grey.shape[1], (c1 + 1) * _BLOCK)
        region = grey[y0:y1, x0:x1] < _DARK
        dark_rows = np.flatnonzero(region.mean(axis=1) > 0.5)
        dark_cols = np.flatnonzero(region.mean(axis=0) > 0.5)
        if dark_rows.size == 0 or dark_cols.size == 0:
            continue
        ya, yb = y0 + dark_rows[0], y0 + dark_rows[-1] + 1
        xa, xb = x0 + dark_cols[0], x0 + dark_cols[-1] + 1
        out[ya:yb, xa:xb] = 255 - grey[ya:yb, xa:xb]
    return out


def prepare_page(
    pixels: NDArray[np.uint8],
    *,
    scale: float,
    pictures: Sequence[Box] = (),
    blanks: Sequence[Box] = (),
) -> Grey:
    """The page as Tesseract should see it. `pictures` (tiles, in points) keep only their
    light marks (badge letters, drawn dark on white) so the photo itself produces no noise
    words; `blanks` (logos) are painted white; then dark rectangles are inverted."""
    grey = darkest_channel(pixels).copy()
    height, width = grey.shape

    def pixel_box(box: Box, inset: int) -> tuple[int, int, int, int]:
        x0, top, x1, bottom = box
        return (
            max(0, round(top * scale) + inset),
            min(height, round(bottom * scale) - inset),
            max(0, round(x0 * scale) + inset),
            min(width, round(x1 * scale) - inset),
        )

    for box in blanks:
        y0, y1, x0, x1 = pixel_box(box, -2)
        grey[y0:y1, x0:x1] = 255
    for box in pictures:
        y0, y1, x0, x1 = pixel_box(box, 0)
        if y1 <= y0 or x1 <= x0:
            continue
        region = grey[y0:y1, x0:x1]
        marks = np.where(region > _LIGHT_LETTER, 0, 255).astype(np.uint8)
        marks[:3, :], marks[-3:, :], marks[:, :3], marks[:, -3:] = 255, 255, 255, 255
        grey[y0:y1, x0:x1] = marks
    return invert_dark_regions(grey)


def _pgm(grey: Grey) -> bytes:
    """Binary PGM: no compression to spend time on, and Tesseract (Leptonica) reads it."""
    height, width = grey.shape
    return b"P5\n%d %d\n255\n" % (width, height) + np.ascontiguousarray(grey).tobytes()


def run_tesseract(
    grey: Grey,
    *,
    psm: int = 6,
    dpi: int = DPI,
    timeout: float = 60.0,
    binary: str = "tesseract",
    language: str = "eng",
) -> str:
    """Tesseract's TSV of the image (stdin to stdout, one thread)."""
    path = shutil.which(binary)
    if path is None:
        raise TesseractMissing(binary)
    env = {**os.environ, "OMP_THREAD_LIMIT": "1"}
    command = [path, "stdin", "stdout", "-l", language, "--psm", str(psm), "--dpi", str(dpi)]
    try:
        done = subprocess.run(
            [*command, "tsv"],
            input=_pgm(grey),
            capture_output=True,
            timeout=timeout,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise TesseractFailed(f"tesseract took longer than {timeout:g} s") from exc
    except OSError as exc:
        raise TesseractFailed(f"tesseract could not start: {exc}") from exc
    if done.returncode != 0:
        message = done.stderr.decode(errors="replace").strip().splitlines()
        raise TesseractFailed(
            f"tesseract exited with {done.returncode}: {message[-1] if message else ''}"
        )
    return done.stdout.decode("utf-8", errors="replace")


def parse_tsv(tsv: str, *, scale: float) -> list[Line]:
    """Tesseract TSV (level 5 rows are words) as lines of words, boxes in points (pixels /
    `scale`), in Tesseract's reading order."""
    lines: dict[tuple[str, str, str, str], list[Word]] = {}
    for row in tsv.splitlines()[1:]:
        cells = row.split("\t")
        if len(cells) < 12 or cells[0] != "5" or not cells[11].strip():
            continue
        left, top, width, height = (float(v) for v in cells[6:10])
        confidence = max(0.0, min(1.0, float(cells[10]) / 100))
        word = Word(
            text=cells[11].strip(),
            box=(left / scale, top / scale, (left + width) / scale, (top + height) / scale),
            confidence=confidence,
        )
        lines.setdefault((cells[1], cells[2], cells[3], cells[4]), []).append(word)
    return [Line(tuple(words)) for words in lines.values()]


def _badge_crop(marks: Grey) -> Grey | None:
    """The badge's letters in a prepared tile: the corner (a quarter of each side) holding
    the most marks, cropped to them. Corners lie outside the round field of view, so a bright
    optic disc is never taken for a badge."""
    height, width = marks.shape
    qh, qw = max(1, height // 4), max(1, width // 4)
    corners = [
        marks[:qh, :qw],
        marks[:qh, width - qw :],
        marks[height - qh :, :qw],
        marks[height - qh :, width - qw :],
    ]
    best = max(corners, key=lambda c: int(np.count_nonzero(c < 128)))
    ys, xs = np.nonzero(best < 128)
    if ys.size < 20:
        return None
    return best[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]


def with_badge_strip(
    grey: Grey, pictures: Sequence[Box], *, scale: float
) -> tuple[Grey, int, list[tuple[int, int] | None]]:
    """`grey` (as `prepare_page` left it) with the pictures' badges copied into a strip below
    the page: the page, the strip's top row, and each picture's span of the strip (None: no
    badge). Read there, on one line with room around each, no badge is lost: on its tile a
    lone two-letter word was skipped by page segmentation in 1 report in 5, and a second
    Tesseract call for the badges alone costs 0.3 s."""
    crops: list[Grey | None] = []
    for x0, top, x1, bottom in pictures:
        region = grey[
            round(top * scale) : round(bottom * scale), round(x0 * scale) : round(x1 * scale)
        ]
        crops.append(_badge_crop(region) if region.size else None)
    present = [c for c in crops if c is not None]
    if not present:
        return grey, grey.shape[0], [None] * len(crops)
    letter = max(c.shape[0] for c in present)
    pad, gap = 2 * letter, 3 * letter
    width = max(grey.shape[1], sum(c.shape[1] + gap for c in present) + pad)
    strip = np.full((letter + 2 * pad, width), 255, np.uint8)
    spans: list[tuple[int, int] | None] = []
    x = pad
    for crop in crops:
        if crop is None:
            spans.append(None)
            continue
        y = pad + (letter - crop.shape[0]) // 2
        strip[y : y + crop.shape[0], x : x + crop.shape[1]] = crop
        spans.append((x - gap // 2, x + crop.shape[1] + gap // 2))
        x += crop.shape[1] + gap
    page = np.full((grey.shape[0], width), 255, np.uint8)
    page[:, : grey.shape[1]] = grey
    return np.vstack([page, strip]), grey.shape[0], spans


def badges_in(
    words: Sequence[Word], spans: Sequence[tuple[int, int] | None], *, scale: float
) -> list[tuple[str, float]]:
    """The text and confidence of each badge ("" and 0 when none) among the strip's words
    (boxes in points, as `parse_tsv` gives them)."""
    found = []
    for span in spans:
        inside = [w for w in words if span and span[0] <= w.centre[0] * scale < span[1]]
        if not inside:
            found.append(("", 0.0))
            continue
        found.append(("".join(w.text for w in inside), min(w.confidence for w in inside)))
    return found
