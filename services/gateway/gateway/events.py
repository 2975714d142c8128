"""What the gateway does with events: a file that failed in processing gives back its quota
slot and its MD5 claim (both the gateway's), so it can be corrected and uploaded again."""

from __future__ import annotations

from collections.abc import Sequence

from contracts.events import Event, ItemStatusChanged
from contracts.topics import ITEM_STATUS
from gateway.accounts import Accounts
from gateway.intake import Intake
from gateway.jobs import JobRecords
from kit.runtime import Emit, Route
from kit.service import Platform

__all__ = ["NAME", "release_failed_file", "routes"]

NAME = "gateway"


async def release_failed_file(event: Event, *, jobs: JobRecords, intake: Intake) -> Sequence[Emit]:
    # Files refused at the door (reported by the gateway itself) never held a slot or a claim.
    if not isinstance(event, ItemStatusChanged) or event.status != "error" or event.service == NAME:
        return ()
    job = await jobs.get(event.job_id)
    if job is not None:
        await intake.release_failed_file(job, event.item_id)
    return ()


def routes(platform: Platform) -> dict[str, Route]:
    jobs = JobRecords(docs=platform.docs)
    intake = Intake(docs=platform.docs, store=platform.store, accounts=Accounts(docs=platform.docs))

    async def on_status(event: Event) -> Sequence[Emit]:
        return await release_failed_file(event, jobs=jobs, intake=intake)

    # Giving back is idempotent (the claim's deletion decides who gives the quota back).
    return {ITEM_STATUS: Route(on_status, idempotent=True)}
