"""The gateway's periodic work (at start-up and on a timer, from the composition root):
give back what interrupted uploads left, forget expired sessions, announce jobs recorded while
the event bus was down (and changes to uploads), and remove the object store's own incomplete
writes."""

from __future__ import annotations

import logging
from datetime import timedelta

from contracts.envelope import utcnow
from gateway.accounts import Accounts
from gateway.intake import Intake
from gateway.jobs import JobRecords
from gateway.sessions import Sessions
from gateway.upload_changes import announce_pending_changes
from gateway.uploads import announce_job
from kit.blobs import CLEAN, RAW, REPORTS, SCANS
from kit.ports import Unavailable
from kit.service import Platform

__all__ = ["ANNOUNCE_AFTER", "maintain"]

log = logging.getLogger(__name__)

# A job normally announces itself within milliseconds of being recorded.
ANNOUNCE_AFTER = timedelta(seconds=30)


async def maintain(platform: Platform) -> None:
    intake = Intake(docs=platform.docs, store=platform.store, accounts=Accounts(docs=platform.docs))
    await intake.sweep()
    await Sessions(docs=platform.docs, lifetime_seconds=0).expire()
    await platform.store.discard_incomplete(
        older_than_seconds=platform.settings.incomplete_write_seconds,
        buckets=(RAW, CLEAN, REPORTS, SCANS),
    )
    jobs = JobRecords(docs=platform.docs)
    before = (utcnow() - ANNOUNCE_AFTER).isoformat()
    for record in await jobs.unannounced(created_before=before):
        try:
            await announce_job(record, bus=platform.bus)
        except Unavailable:
            return  # still down: next time
        await jobs.mark_announced(record.job_id)
        log.info("announced job %s, recorded while the event bus was unavailable", record.job_id)
    try:
        await announce_pending_changes(docs=platform.docs, bus=platform.bus)
    except Unavailable:
        return
