"""Job-tracker wiring: the single writer of the job status read model."""

from __future__ import annotations

from collections.abc import Sequence

from contracts.events import Event
from contracts.topics import ITEM_STATUS
from job_tracker.read_model import JobStatuses
from job_tracker.status import apply_event
from kit.ports import Documents
from kit.runtime import Emit, Route

__all__ = ["NAME", "routes", "track"]

NAME = "job-tracker"


async def track(event: Event, *, statuses: JobStatuses) -> Sequence[Emit]:
    # Safe as read-modify-write: one job's events share a partition (keyed by job id) and a
    # partition has exactly one consumer in the group.
    await statuses.put(apply_event(await statuses.get(event.job_id), event))
    return ()


def routes(*, docs: Documents) -> dict[str, Route]:
    statuses = JobStatuses(docs=docs)

    async def handle(event: Event) -> Sequence[Emit]:
        return await track(event, statuses=statuses)

    # The fold is idempotent (statuses only move forward; a terminal one is replaced only by a
    # later one), so the runtime keeps no ledger for it.
    return {ITEM_STATUS: Route(handle, idempotent=True)}
