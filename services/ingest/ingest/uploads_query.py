"""The query side of the catalogue (`uploads`): the Direct Upload Dashboard's filters, its pages
and its KPI cards, over the documents port only (so FerretDB v1 serves it: equality, `Range`,
`AnyOf`, sort, skip, limit, count and count_by; no aggregation pipeline).

The grading status of an upload is read from its record: `pre_graded`, and `graded_at` /
`graded_by` where a grading has been recorded (graded = `graded_at` present). Those two are
read from the raw document, so records written before grading was recorded read as not
graded. An upload is edited when its record holds an edited version (`CatalogueRecord.edited`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, Literal

from ingest.read_model import CATALOGUE, CatalogueRecord
from kit.ports import AnyOf, Documents, Index, Range, Scalar

__all__ = [
    "INDEXES",
    "TOP",
    "GradingStatus",
    "Upload",
    "UploadFilter",
    "UploadKpis",
    "UploadsQuery",
    "Usage",
]

GradingStatus = Literal["not_graded", "pre_graded", "graded"]
TOP = 3  # how many cameras, diseases and areas a KPI card names

# Every dashboard filter with the page's order (newest first), so a filtered page is read in
# index order and stops after `per_page`, and a filtered count reads only what matches.
# (`lab_unit_id, ingested_at` and `ingested_at` alone are already in `read_model.INDEXES`.)
INDEXES: Mapping[str, Sequence[Index]] = {
    CATALOGUE: tuple(
        Index(fields=((field, 1), ("ingested_at", -1)))
        for field in (
            "hospital_id",
            "camera_id",
            "disease_id",
            "area_id",
            "uploader_id",
            "pre_graded",
            "needs_review",
            "graded_at",
        )
    ),
}

# `graded_at` is an ISO-8601 string where a grading exists: every string is >= "".
_GRADED = Range(gte="")


@dataclass(frozen=True, kw_only=True)
class UploadFilter:
    """What the dashboard is narrowed to; None leaves a criterion out. `date_from` and `date_to`
    are days of `ingested_at` (UTC), both inclusive: `date_to` takes in the whole day."""

    date_from: date | None = None
    date_to: date | None = None
    hospital_id: str | None = None
    lab_unit_id: str | None = None
    camera_id: str | None = None
    disease_id: str | None = None
    area_id: str | None = None
    uploader_id: str | None = None
    pre_graded: bool | None = None
    graded: bool | None = None
    needs_review: bool | None = None

    def __post_init__(self) -> None:
        if self.date_from and self.date_to and self.date_from > self.date_to:
            raise ValueError(
                f"the date range is empty: from ({self.date_from}) is after to ({self.date_to})"
            )

    def where(self, base: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """A documents filter for this filter within `base` (the access policy's scope, e.g.
        ``{"lab_unit_id": AnyOf([...])}``). A lab unit outside `base` matches nothing."""
        where: dict[str, Any] = dict(base or {})
        bounds: dict[str, str] = {}
        if self.date_from:
            bounds["gte"] = self.date_from.isoformat()
        if self.date_to:
            bounds["lt"] = (self.date_to + timedelta(days=1)).isoformat()
        if bounds:
            where["ingested_at"] = Range(**bounds)
        for field, value in (
            ("hospital_id", self.hospital_id),
            ("lab_unit_id", self.lab_unit_id),
            ("camera_id", self.camera_id),
            ("disease_id", self.disease_id),
            ("area_id", self.area_id),
            ("uploader_id", self.uploader_id),
            ("pre_graded", self.pre_graded),
            ("needs_review", self.needs_review),
        ):
            if value is None:
                continue
            scope = where.get(field)
            if scope is not None and not _within(value, scope):
                where[field] = AnyOf([])
            else:
                where[field] = value
        if self.graded is not None:
            where["graded_at"] = _GRADED if self.graded else None  # None: null or missing
        return where


def _within(value: Scalar, scope: Any) -> bool:
    if isinstance(scope, AnyOf):
        return value in scope.values
    return bool(value == scope)


@dataclass(frozen=True, kw_only=True)
class Upload:
    """One catalogued upload as the dashboard shows it."""

    record: CatalogueRecord
    graded_by: str | None = None
    graded_at: str | None = None

    @property
    def edited(self) -> bool:
        return self.record.edited is not None

    @property
    def grading_status(self) -> GradingStatus:
        if self.graded_at:
            return "graded"
        return "pre_graded" if self.record.pre_graded else "not_graded"

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> Upload:
        graded_by, graded_at = doc.get("graded_by"), doc.get("graded_at")
        return cls(
            record=CatalogueRecord.model_validate(doc),
            graded_by=graded_by if isinstance(graded_by, str) else None,
            graded_at=graded_at if isinstance(graded_at, str) else None,
        )


@dataclass(frozen=True, kw_only=True)
class Usage:
    """How often one camera, disease or area occurs in the filtered set."""

    id: str
    count: int


@dataclass(frozen=True, kw_only=True)
class UploadKpis:
    """The KPI cards: uploads matching the filter and all the caller may see, and per camera,
    disease and area how many kinds occur and the `TOP` most frequent."""

    total: int
    all_time: int
    camera_types: int
    cameras: tuple[Usage, ...]
    disease_types: int
    diseases: tuple[Usage, ...]
    area_types: int
    areas: tuple[Usage, ...]


def _ranked(counts: Mapping[Scalar, int]) -> list[Usage]:
    """Most frequent first, ties by id; uploads without a value are not a kind."""
    known = [Usage(id=str(key), count=n) for key, n in counts.items() if key is not None]
    return sorted(known, key=lambda usage: (-usage.count, usage.id))


class UploadsQuery:
    """Reads the `uploads` collection for the dashboard."""

    def __init__(self, *, docs: Documents) -> None:
        self._records = docs.collection(CATALOGUE)

    async def page(
        self,
        upload_filter: UploadFilter,
        *,
        base: Mapping[str, Any] | None = None,
        page: int = 1,
        per_page: int = 50,
    ) -> tuple[list[Upload], int]:
        """One page (from 1) of the matching uploads, newest first (ties by id), and how many
        match in all."""
        if page < 1 or per_page < 1:
            raise ValueError(f"page and per_page start at 1, not {page} and {per_page}")
        where = upload_filter.where(base)
        found, total = await asyncio.gather(
            self._records.find(
                where,
                sort=[("ingested_at", -1)],
                limit=per_page,
                skip=(page - 1) * per_page,
            ),
            self._records.count(where),
        )
        return [Upload.from_document(doc) for doc in found], total

    async def get(self, upload_id: str) -> Upload | None:
        doc = await self._records.get(upload_id)
        return None if doc is None else Upload.from_document(doc)

    async def kpis(
        self, upload_filter: UploadFilter, *, base: Mapping[str, Any] | None = None
    ) -> UploadKpis:
        """The KPI cards of the filtered set; `all_time` counts everything within `base`."""
        where = upload_filter.where(base)
        # Five independent reads: the embedded adapter runs them on its reader pool at once.
        total, all_time, cameras, diseases, areas = await asyncio.gather(
            self._records.count(where),
            self._records.count(dict(base or {})),
            self._records.count_by("camera_id", where),
            self._records.count_by("disease_id", where),
            self._records.count_by("area_id", where),
        )
        camera_ranks, disease_ranks, area_ranks = (
            _ranked(cameras),
            _ranked(diseases),
            _ranked(areas),
        )
        return UploadKpis(
            total=total,
            all_time=all_time,
            camera_types=len(camera_ranks),
            cameras=tuple(camera_ranks[:TOP]),
            disease_types=len(disease_ranks),
            diseases=tuple(disease_ranks[:TOP]),
            area_types=len(area_ranks),
            areas=tuple(area_ranks[:TOP]),
        )
