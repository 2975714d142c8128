"""Job-tracker wiring: the single writer of the `job_status` documents."""

from __future__ import annotations

from collections.abc import Sequence

from contracts.events import Event
from contracts.topics import ITEM_STATUS
from job_tracker.status import apply_event
from kit.ports import Collection
from kit.runtime import Emit, Route

__all__ = ["NAME", "STATUS_COLLECTION", "routes", "track"]

NAME = "job-tracker"
STATUS_COLLECTION = "job_status"


async def track(event: Event, *, statuses: Collection) -> Sequence[Emit]:
    # Safe as read-modify-write: one job's events share a partition (keyed by job id) and a
    # partition has exactly one consumer in the group.
    doc = await statuses.get(event.job_id)
    await statuses.put(apply_event(doc, event))
    return ()


def routes(*, statuses: Collection) -> dict[str, Route]:
    async def handle(event: Event) -> Sequence[Emit]:
        return await track(event, statuses=statuses)

    return {ITEM_STATUS: Route(handle)}
