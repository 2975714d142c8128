"""Which eye a picture shows, where a source says so. Remidio file names and paths never do;
the report's page 1 prints a tile of each picture it used with an RE/LE badge, so a tile that
is the same picture as a capture (perceptual hashes close) gives that capture its eye."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from kit.phash import hamming, same_picture

__all__ = ["EYES", "ImageHash", "TileHash", "match_tiles"]

EYES = {"RE": "right", "LE": "left"}


@dataclass(frozen=True)
class TileHash:
    eye: str | None
    phash: str


@dataclass(frozen=True)
class ImageHash:
    item_id: str
    phash: str


def match_tiles(tiles: Iterable[TileHash], images: Iterable[ImageHash]) -> Mapping[str, str]:
    """item id → "right" | "left" for each capture a badged tile shows. Each tile goes to its
    closest capture, if close enough; a capture two tiles claim with different eyes gets none
    (a conflict is left for a person, not guessed)."""
    candidates = [i for i in images if i.phash]
    claims: dict[str, set[str]] = {}
    for tile in tiles:
        eye = EYES.get(tile.eye or "")
        if eye is None or not candidates:
            continue
        best = min(candidates, key=lambda image: hamming(image.phash, tile.phash))
        if same_picture(best.phash, tile.phash):
            claims.setdefault(best.item_id, set()).add(eye)
    return {item_id: eyes.pop() for item_id, eyes in claims.items() if len(eyes) == 1}
