"""The job view: the gateway's job record (who, from where, which files) joined with the
status document the job-tracker maintains."""

from __future__ import annotations

from typing import Any

from gateway.accounts import User
from kit.ports import Documents

__all__ = ["JOBS", "STATUS", "job_view", "recent_jobs"]

JOBS, STATUS = "jobs", "job_status"
_TERMINAL = ("completed", "error")


def _merge(job: dict[str, Any], status: dict[str, Any] | None, *, include_ip: bool
           ) -> dict[str, Any]:
    tracked: dict[str, Any] = (status or {}).get("items", {})
    items = []
    for entry in job["items"]:
        state = tracked.get(entry["item_id"])
        if state is None:  # not tracked yet: rejected at the door, or still queued
            state = {"status": "error" if entry["rejected_reason"] else "queued",
                     "reason": entry["rejected_reason"], "started_at": None,
                     "finished_at": None}
        items.append({
            "item_id": entry["item_id"],
            "filename": entry["filename"],
            "size": entry.get("size"),
            "status": state["status"],
            "reason": state.get("reason"),
            "started_at": state.get("started_at"),
            "finished_at": state.get("finished_at"),
            "parent_item_id": state.get("parent_item_id"),
        })
    known = {i["item_id"] for i in items}
    for item_id, state in tracked.items():  # children found inside archives
        if item_id not in known:
            items.append({"item_id": item_id, "filename": None, "size": None, **{
                k: state.get(k) for k in ("status", "reason", "started_at", "finished_at",
                                          "parent_item_id")}})
    counts = {s: sum(1 for i in items if i["status"] == s)
              for s in ("queued", "processing", "completed", "error")}
    total = len(items)
    if status is not None and status.get("opened"):
        job_state, message = status["status"], status.get("message")
    elif total and counts["error"] == total:
        job_state, message = "error", "One or more files failed"
    else:
        job_state, message = "queued", None
    finished = counts["completed"] + counts["error"]
    view = {
        "job_id": job["job_id"],
        "token": job["job_id"],
        "kind": job["kind"],
        "status": job_state,
        "message": message,
        "uploader": job["uploader"],
        "user_agent": job.get("user_agent"),
        "created_at": job["created_at"],
        "completed_at": (status or {}).get("finished_at") if job_state in ("done", "error")
        else None,
        "metadata": job.get("metadata"),
        "total": total,
        "processed": finished,
        "succeeded": counts["completed"],
        "failed": counts["error"],
        "queued": counts["queued"],
        "processing": counts["processing"],
        "rejected_count": job.get("rejected_count", 0),
        "progress": round(100 * finished / total) if total else 100,
        "items": items,
    }
    if include_ip:
        view["ip"] = job.get("ip")
    return view


async def job_view(job_id: str, *, docs: Documents, include_ip: bool) -> dict[str, Any] | None:
    job = await docs.collection(JOBS).get(job_id)
    if job is None:
        return None
    status = await docs.collection(STATUS).get(job_id)
    return _merge(job, status, include_ip=include_ip)


async def recent_jobs(*, docs: Documents, viewer: User, limit: int = 100
                      ) -> list[dict[str, Any]]:
    """The most recent jobs the viewer may list: uploaders see their own (the list shows job
    tokens, and a token opens a job); data managers and admins see everyone's."""
    where = {} if viewer.role in ("admin", "data_manager") else {"uploader": viewer.username}
    jobs = await docs.collection(JOBS).find(where, sort=[("created_at", -1)], limit=limit)
    out = []
    for job in jobs:
        view = _merge(job, await docs.collection(STATUS).get(job["_id"]),
                      include_ip=viewer.is_admin)
        view.pop("items")
        out.append(view)
    return out
