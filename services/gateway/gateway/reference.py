"""Reference data: hospitals, lab units (each of a hospital), cameras, diseases, areas.

Items are never forgotten, only retired: a retired camera is no longer offered on the form,
but old jobs and uploads that name it still show its name (not a bare id)."""

from __future__ import annotations

import re
from typing import Any

from kit.ports import Documents

__all__ = ["KINDS", "ReferenceData", "seed_reference_data", "slug"]

KINDS = ("hospitals", "lab_units", "cameras", "diseases", "areas")

_SEED: dict[str, list[dict[str, Any]]] = {
    "hospitals": [
        {"_id": "city-general", "name": "City General Hospital"},
        {"_id": "riverside-eye", "name": "Riverside Eye Institute"},
    ],
    "lab_units": [
        {"_id": "city-retina-clinic", "name": "Retina Clinic", "hospital_id": "city-general"},
        {"_id": "city-screening-camp", "name": "Screening Camp", "hospital_id": "city-general"},
        {
            "_id": "riverside-outpatient",
            "name": "Outpatient Eye Unit",
            "hospital_id": "riverside-eye",
        },
    ],
    "cameras": [
        {"_id": "remidio-fop", "name": "Remidio Fundus on Phone"},
        {"_id": "topcon-nw400", "name": "Topcon TRC-NW400"},
        {"_id": "zeiss-visucam", "name": "Zeiss Visucam 500"},
    ],
    "diseases": [
        {"_id": "dr", "name": "DR"},
        {"_id": "glaucoma", "name": "Glaucoma"},
        {"_id": "amd", "name": "AMD"},
    ],
    "areas": [
        {"_id": "left-eye", "name": "left eye"},
        {"_id": "right-eye", "name": "right eye"},
        {"_id": "both-eyes", "name": "both"},
    ],
}


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "item"


def _public(doc: dict[str, Any]) -> dict[str, Any]:
    out = {"id": doc["_id"], "name": doc["name"]}
    if "hospital_id" in doc:
        out["hospital_id"] = doc["hospital_id"]
    if doc.get("retired"):
        out["retired"] = True
    return out


class ReferenceData:
    def __init__(self, *, docs: Documents) -> None:
        self._docs = docs

    async def all(self, *, include_retired: bool = False) -> dict[str, list[dict[str, Any]]]:
        return {kind: await self.list(kind, include_retired=include_retired) for kind in KINDS}

    async def list(self, kind: str, *, include_retired: bool = False) -> list[dict[str, Any]]:
        docs = await self._docs.collection(kind).find(sort=[("name", 1)])
        return [_public(d) for d in docs if include_retired or not d.get("retired")]

    async def names(self) -> dict[str, dict[str, str]]:
        """Every item's name by kind and id, retired ones too (for old jobs and uploads)."""
        everything = await self.all(include_retired=True)
        return {kind: {i["id"]: i["name"] for i in items} for kind, items in everything.items()}

    async def get(self, kind: str, item_id: str) -> dict[str, Any] | None:
        """The item, retired or not (see `active`)."""
        doc = await self._docs.collection(kind).get(item_id)
        return _public(doc) if doc else None

    async def active(self, kind: str, item_id: str) -> dict[str, Any] | None:
        """The item if it is still offered."""
        item = await self.get(kind, item_id)
        return None if item is None or item.get("retired") else item

    async def put(self, kind: str, item: dict[str, Any]) -> dict[str, Any]:
        if kind not in KINDS:
            raise KeyError(kind)
        doc: dict[str, Any] = {
            "_id": item.get("id") or slug(item["name"]),
            "name": item["name"].strip(),
        }
        if kind == "lab_units":
            doc["hospital_id"] = item["hospital_id"]
        if item.get("retired"):
            doc["retired"] = True
        await self._docs.collection(kind).put(doc)
        return _public(doc)

    async def retire(self, kind: str, item_id: str) -> bool:
        return await self._docs.collection(kind).update(item_id, set={"retired": True}) is not None

    async def restore(self, kind: str, item_id: str) -> bool:
        return await self._docs.collection(kind).update(item_id, set={"retired": False}) is not None


async def seed_reference_data(docs: Documents) -> bool:
    """Seed the defaults once: an empty hospitals collection means a new installation."""
    if await docs.collection("hospitals").count() > 0:
        return False
    for kind, items in _SEED.items():
        for item in items:
            await docs.collection(kind).put(dict(item))
    return True
