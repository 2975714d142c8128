"""Where an archive's entries sit: layout profiles of the cameras we know, pure functions.

A Remidio "Fundus on Phone" export holds one folder per patient visit,
``<Name>_<MRN>_<DD-MM-YYYY>/`` (the name is one or more ``_``-separated words, so the folder
is split from the right), with the fundus images under ``FOP/`` (the PRISTINE camera puts
them directly in the patient folder) and the screening report under ``REPORTS/``. Entry
names are local capture times, ``<h.mm.ss.mmm>_<AM|PM>``, on a 12-hour clock whose 12
o'clock is written 0 (``0.02.16.099_PM`` is 12:02:16.099 PM).

A profile looks at the paths under one patient folder and says whether it is its layout;
the first that fits wins, and entries outside any patient folder are "generic" (kept as
they are: no PHI is known in them). The patient folder's name is PHI: `display_name` puts
the subject id in its place.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import PurePosixPath

__all__ = [
    "GENERIC",
    "PROFILES",
    "REMIDIO_FOP",
    "REMIDIO_PRISTINE",
    "LayoutProfile",
    "PatientFolder",
    "Placement",
    "capture_time",
    "display_name",
    "parse_patient_folder",
    "place_entries",
]

GENERIC = "generic"
REMIDIO_FOP = "remidio-fop"
REMIDIO_PRISTINE = "remidio-pristine"

_FOLDER = re.compile(r"(?P<name>.+)_(?P<mrn>\d{8})_(?P<day>\d{2})-(?P<month>\d{2})-(?P<year>\d{4})")
_TIME = re.compile(r"(?P<h>\d{1,2})\.(?P<m>\d{2})\.(?P<s>\d{2})\.(?P<ms>\d{3})_(?P<half>AM|PM)")
_IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})


@dataclass(frozen=True)
class PatientFolder:
    """A Remidio patient folder, parsed. Everything here but nothing derived from it is PHI."""

    folder: str  # the folder's name as it was
    name: str  # the patient's name, words joined by spaces
    mrn: str
    capture_date: str  # ISO date


@dataclass(frozen=True)
class Placement:
    """Where one entry sits: its layout, its patient folder (None: generic), the path under
    that folder (the whole path when generic) and its local capture time."""

    layout: str
    folder: PatientFolder | None
    prefix: tuple[str, ...]  # folders above the patient folder (usually none)
    relative: str
    captured_at: str | None = None


def parse_patient_folder(part: str) -> PatientFolder | None:
    """``Jane_Doe_12345678_31-01-2025`` → name, MRN, ISO capture date (None if not one)."""
    match = _FOLDER.fullmatch(part)
    if match is None:
        return None
    words = [w for w in match["name"].split("_") if w]
    if not words:
        return None
    try:
        day = date(int(match["year"]), int(match["month"]), int(match["day"]))
    except ValueError:
        return None
    return PatientFolder(
        folder=part, name=" ".join(words), mrn=match["mrn"], capture_date=day.isoformat()
    )


def capture_time(stem: str, capture_date: str) -> str | None:
    """``0.02.16.099_PM`` on 2025-01-31 → ``2025-01-31T12:02:16.099`` (None if not a time)."""
    match = _TIME.fullmatch(stem)
    if match is None:
        return None
    hour, minute, second = int(match["h"]), int(match["m"]), int(match["s"])
    if hour > 12 or minute > 59 or second > 59:
        return None
    hour %= 12  # the camera writes 12 o'clock as 0; accept a 12 as well
    if match["half"] == "PM":
        hour += 12
    return f"{capture_date}T{hour:02d}:{minute:02d}:{second:02d}.{match['ms']}"


@dataclass(frozen=True)
class LayoutProfile:
    """A camera's layout: `fits` gets the paths under one patient folder (as parts)."""

    name: str
    fits: Callable[[Sequence[tuple[str, ...]]], bool]


def _is_image(parts: tuple[str, ...]) -> bool:
    return PurePosixPath(parts[-1]).suffix.lower() in _IMAGE_SUFFIXES


def _fop_fits(paths: Sequence[tuple[str, ...]]) -> bool:
    return any(len(p) == 2 and p[0].upper() == "FOP" for p in paths)


def _pristine_fits(paths: Sequence[tuple[str, ...]]) -> bool:
    return any(len(p) == 1 and _is_image(p) for p in paths)


PROFILES: tuple[LayoutProfile, ...] = (
    LayoutProfile(REMIDIO_FOP, _fop_fits),
    LayoutProfile(REMIDIO_PRISTINE, _pristine_fits),
)


def _split(name: str) -> tuple[tuple[str, ...], PatientFolder | None, tuple[str, ...]]:
    parts = tuple(p for p in name.replace("\\", "/").split("/") if p not in ("", "."))
    # The patient folder is a directory (never the file itself); the deepest one wins.
    for position in range(len(parts) - 2, -1, -1):
        folder = parse_patient_folder(parts[position])
        if folder is not None:
            return parts[:position], folder, parts[position + 1 :]
    return (), None, parts


def place_entries(
    names: Sequence[str], *, profiles: Sequence[LayoutProfile] = PROFILES
) -> list[Placement]:
    """The placement of each entry of `names` (same order). One profile per patient folder,
    decided by all of that folder's paths."""
    split = [_split(name) for name in names]
    under: dict[tuple[tuple[str, ...], str], list[tuple[str, ...]]] = {}
    for prefix, folder, rest in split:
        if folder is not None:
            under.setdefault((prefix, folder.folder), []).append(rest)
    layout_of = {
        key: next((p.name for p in profiles if p.fits(paths)), None) for key, paths in under.items()
    }
    placements: list[Placement] = []
    for name, (prefix, folder, rest) in zip(names, split, strict=True):
        layout = layout_of.get((prefix, folder.folder)) if folder is not None else None
        if folder is None or layout is None:
            placements.append(Placement(GENERIC, None, (), name))
            continue
        stem = PurePosixPath(rest[-1]).stem
        placements.append(
            Placement(
                layout,
                folder,
                prefix,
                "/".join(rest),
                captured_at=capture_time(stem, folder.capture_date),
            )
        )
    return placements


def display_name(placement: Placement, *, subject_id: str | None) -> str:
    """The name shown for an entry: the patient folder replaced by the subject id
    (``S1a2b.../FOP/0.02.16.099_PM.jpg``); folders above it are dropped (an export's own
    folder is named after the MRN too). A generic entry keeps its name."""
    if placement.folder is None or subject_id is None:
        return placement.relative
    return f"{subject_id}/{placement.relative}"
