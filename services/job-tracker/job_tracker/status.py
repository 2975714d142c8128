"""The status read model: a pure fold of job and item status events into one document a job.

Statuses only move forward (queued → processing → completed | error) because events from
different services can arrive in any order; a later terminal status replaces an earlier one
(a replayed dead letter may turn an error into completed).
"""

from __future__ import annotations

from typing import Any

from contracts.events import Event, ItemStatusChanged, JobOpened

__all__ = ["JOB_FAILED_MESSAGE", "apply_event", "job_status"]

JOB_FAILED_MESSAGE = "One or more files failed"
_RANK = {"queued": 0, "processing": 1, "completed": 2, "error": 2}
_TERMINAL = {"completed", "error"}

Doc = dict[str, Any]


def _new_doc(job_id: str) -> Doc:
    return {"_id": job_id, "job_id": job_id, "kind": None, "item_ids": [], "items": {},
            "opened": False, "opened_at": None}


def _empty_item() -> Doc:
    return {"status": "queued", "reason": None, "started_at": None, "finished_at": None,
            "updated_at": None, "parent_item_id": None}


def _apply_item(item: Doc, event: ItemStatusChanged) -> Doc:
    at = event.at.isoformat()
    old, new = item["status"], event.status
    if _RANK[new] < _RANK[old]:
        return item
    if old in _TERMINAL and new in _TERMINAL and (item["finished_at"] or "") >= at:
        return item
    item = dict(item)
    item["status"] = new
    item["updated_at"] = at
    if event.parent_item_id:
        item["parent_item_id"] = event.parent_item_id
    if new == "processing" and item["started_at"] is None:
        item["started_at"] = at
    if new in _TERMINAL:
        item["finished_at"] = at
        item["started_at"] = item["started_at"] or at
        item["reason"] = event.reason if new == "error" else None
    return item


def job_status(doc: Doc) -> tuple[str, str | None]:
    """The job's state and message, derived from its items."""
    items: dict[str, Doc] = doc["items"]
    statuses = [items.get(i, {"status": "queued"})["status"] for i in _all_item_ids(doc)]
    if not statuses or not doc["opened"]:
        return "queued", None
    if all(s in _TERMINAL for s in statuses):
        if any(s == "error" for s in statuses):
            return "error", JOB_FAILED_MESSAGE
        return "done", None
    if all(s == "queued" for s in statuses):
        return "queued", None
    return "processing", None


def _all_item_ids(doc: Doc) -> list[str]:
    ids = list(doc["item_ids"])
    known = set(ids)
    ids.extend(i for i in doc["items"] if i not in known)
    return ids


def apply_event(doc: Doc | None, event: Event) -> Doc:
    """Fold one event into the job's status document (returns a new document)."""
    doc = dict(doc) if doc is not None else _new_doc(event.job_id)
    doc["items"] = dict(doc["items"])
    if isinstance(event, JobOpened):
        doc["opened"] = True
        doc["kind"] = event.kind
        doc["opened_at"] = event.opened_at.isoformat()
        doc["item_ids"] = list(dict.fromkeys([*doc["item_ids"], *event.item_ids]))
        for item_id in event.item_ids:
            doc["items"].setdefault(item_id, _empty_item())
    elif isinstance(event, ItemStatusChanged):
        item = doc["items"].get(event.item_id) or _empty_item()
        doc["items"][event.item_id] = _apply_item(item, event)
    else:
        return doc
    status, message = job_status(doc)
    counts = {s: 0 for s in _RANK}
    for item_id in _all_item_ids(doc):
        counts[doc["items"].get(item_id, {"status": "queued"})["status"]] += 1
    doc.update(
        status=status,
        message=message,
        total=sum(counts.values()),
        completed_count=counts["completed"],
        error_count=counts["error"],
        processing_count=counts["processing"],
        queued_count=counts["queued"],
    )
    if status in ("done", "error") and not doc.get("finished_at"):
        finished = [it["finished_at"] for it in doc["items"].values() if it["finished_at"]]
        doc["finished_at"] = max(finished) if finished else None
    elif status not in ("done", "error"):
        doc["finished_at"] = None
    return doc
