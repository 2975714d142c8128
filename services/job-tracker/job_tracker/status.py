"""The status read model's logic: a pure fold of job and item status events into a `JobStatus`.

Statuses only move forward (queued → processing → completed | error) because events from
different services can arrive in any order; a later terminal status replaces an earlier one
(a replayed dead letter may turn an error into completed).
"""

from __future__ import annotations

from collections.abc import Iterable

from contracts.events import Event, ItemStatus, ItemStatusChanged, JobOpened
from job_tracker.read_model import ItemState, JobState, JobStatus

__all__ = ["JOB_FAILED_MESSAGE", "apply_event", "job_state"]

JOB_FAILED_MESSAGE = "One or more files failed"
_RANK = {"queued": 0, "processing": 1, "completed": 2, "error": 2}
_TERMINAL = {"completed", "error"}


def _apply_item(item: ItemState, event: ItemStatusChanged) -> ItemState:
    at = event.at.isoformat()
    old, new = item.status, event.status
    if _RANK[new] < _RANK[old]:
        return item
    if old in _TERMINAL and new in _TERMINAL and (item.finished_at or "") >= at:
        return item
    changes: dict[str, object] = {"status": new, "updated_at": at}
    if event.parent_item_id:
        changes["parent_item_id"] = event.parent_item_id
    if new == "processing" and item.started_at is None:
        changes["started_at"] = at
    if new in _TERMINAL:
        changes["finished_at"] = at
        changes["started_at"] = item.started_at or at
        changes["reason"] = event.reason if new == "error" else None
    return item.model_copy(update=changes)


def job_state(
    statuses: Iterable[ItemStatus], *, opened: bool = True
) -> tuple[JobState, str | None]:
    """A job's state and message from its items' statuses: the one place this is decided
    (the gateway asks it too, for a job the tracker has not seen yet)."""
    statuses = list(statuses)
    if not statuses or not opened:
        return "queued", None
    if all(s in _TERMINAL for s in statuses):
        if any(s == "error" for s in statuses):
            return "error", JOB_FAILED_MESSAGE
        return "done", None
    if all(s == "queued" for s in statuses):
        return "queued", None
    return "processing", None


def apply_event(current: JobStatus | None, event: Event) -> JobStatus:
    """Fold one event into the job's status (returns a new one)."""
    doc = current if current is not None else JobStatus(job_id=event.job_id)
    items = dict(doc.items)
    changes: dict[str, object] = {}
    if isinstance(event, JobOpened):
        changes.update(
            opened=True,
            kind=event.kind,
            opened_at=event.opened_at.isoformat(),
            item_ids=tuple(dict.fromkeys([*doc.item_ids, *event.item_ids])),
        )
        for item_id in event.item_ids:
            items.setdefault(item_id, ItemState())
    elif isinstance(event, ItemStatusChanged):
        items[event.item_id] = _apply_item(items.get(event.item_id) or ItemState(), event)
    else:
        return doc
    doc = doc.model_copy(update={**changes, "items": items})
    statuses = [items[i].status if i in items else "queued" for i in doc.all_item_ids()]
    state, message = job_state(statuses, opened=doc.opened)
    finished_at = doc.finished_at
    if state in ("done", "error"):
        if not finished_at:
            finished = [it.finished_at for it in items.values() if it.finished_at]
            finished_at = max(finished) if finished else None
    else:
        finished_at = None
    return doc.model_copy(
        update={
            "status": state,
            "message": message,
            "total": len(statuses),
            "completed_count": statuses.count("completed"),
            "error_count": statuses.count("error"),
            "processing_count": statuses.count("processing"),
            "queued_count": statuses.count("queued"),
            "finished_at": finished_at,
        }
    )
