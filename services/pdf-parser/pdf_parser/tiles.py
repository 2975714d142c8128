"""The pictures printed on a report page: fundus tiles (hashed, to find their captures, and
labelled by their RE/LE badge) and logos (blanked before OCR: pictures carry no fields)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import pypdfium2 as pdfium
from PIL import Image

from contracts.events import ReportTile
from kit.phash import fundus_phash
from pdf_parser.layout import Box, Word, words_within

__all__ = ["PageImage", "eye_of", "page_images", "read_tiles"]

ImageKind = Literal["tile", "logo", "text"]
_TILE_SIDE = 100.0  # points: a fundus tile is at least this wide and tall (~3.5 cm)


@dataclass(frozen=True, kw_only=True)
class PageImage:
    box: Box  # points from the page's top-left
    kind: ImageKind
    picture: Image.Image | None = None  # the tile's own pixels (tiles only)


def _kind(width: float, height: float) -> ImageKind:
    if height <= 0 or width <= 0:
        return "text"
    aspect = width / height
    if min(width, height) >= _TILE_SIDE and 0.6 <= aspect <= 1 / 0.6:
        return "tile"
    if 0.5 <= aspect <= 2 and min(width, height) >= 24:
        return "logo"
    return "text"  # a line of text drawn as a bitmap, a badge, a rule


def page_images(page: pdfium.PdfPage) -> list[PageImage]:
    """The page's image objects, classified by shape; tiles in reading order (rows top to
    bottom, left to right). The caller holds pdfium's lock."""
    page_height = page.get_height()
    found: list[PageImage] = []
    for obj in page.get_objects(filter=(pdfium.raw.FPDF_PAGEOBJ_IMAGE,)):
        assert isinstance(obj, pdfium.PdfImage)
        left, bottom, right, top = obj.get_bounds()
        box = (left, page_height - top, right, page_height - bottom)
        kind = _kind(right - left, top - bottom)
        picture = None
        if kind == "tile":
            picture = obj.get_bitmap(render=False).to_pil().convert("RGB")
        found.append(PageImage(box=box, kind=kind, picture=picture))
    tiles = [image for image in found if image.kind == "tile"]
    logos = [
        image
        for image in found
        if image.kind == "logo" and not any(_inside(image.box, t.box) for t in tiles)
    ]
    others = [image for image in found if image not in tiles and image not in logos]
    return _reading_order(tiles) + logos + others


def _inside(inner: Box, outer: Box) -> bool:
    cx, cy = (inner[0] + inner[2]) / 2, (inner[1] + inner[3]) / 2
    return outer[0] <= cx <= outer[2] and outer[1] <= cy <= outer[3]


def _reading_order(tiles: Sequence[PageImage]) -> list[PageImage]:
    rows: list[list[PageImage]] = []
    for tile in sorted(tiles, key=lambda t: t.box[1]):
        height = tile.box[3] - tile.box[1]
        if rows and abs(rows[-1][0].box[1] - tile.box[1]) < height / 2:
            rows[-1].append(tile)
        else:
            rows.append([tile])
    return [tile for row in rows for tile in sorted(row, key=lambda t: t.box[0])]


def eye_of(words: Sequence[Word], box: Box) -> tuple[Literal["RE", "LE"] | None, float]:
    """The tile's badge, read among the page's words that lie on the tile."""
    for word in words_within(words, box):
        text = "".join(c for c in word.text.upper() if c.isalpha())
        if text == "RE":
            return "RE", word.confidence
        if text == "LE":
            return "LE", word.confidence
    return None, 0.0


def read_tiles(
    images: Sequence[PageImage], words: Sequence[Word], *, page: int
) -> list[ReportTile]:
    tiles = []
    for image in images:
        if image.kind != "tile" or image.picture is None:
            continue
        eye, confidence = eye_of(words, image.box)
        tiles.append(
            ReportTile(page=page, eye=eye, phash=fundus_phash(image.picture), confidence=confidence)
        )
    return tiles
