"""What the gateway does with events:
- a file that failed in processing gives back its quota slot and its MD5 claim (both the
  gateway's), so it can be corrected and uploaded again;
- once an archive's patients are known (its patient folders, its reports), the names of the
  job's files that hold a patient's name or MRN (a Remidio export is named by the MRN) are
  redacted in the gateway's job record, the original kept in the PHI vault.
"""

from __future__ import annotations

from collections.abc import Sequence

from contracts.events import ArchiveExtracted, Event, ItemStatusChanged, ReportParsed
from contracts.topics import ARCHIVES_EXTRACTED, ITEM_STATUS, REPORTS_PARSED
from gateway.accounts import Accounts
from gateway.intake import Intake
from gateway.jobs import JobRecords
from kit.phi import PhiRecord, PhiVault, redact
from kit.runtime import Emit, Route
from kit.service import Platform

__all__ = ["NAME", "redact_job_file_names", "release_failed_file", "routes"]

NAME = "gateway"


async def release_failed_file(event: Event, *, jobs: JobRecords, intake: Intake) -> Sequence[Emit]:
    # Files refused at the door (reported by the gateway itself) never held a slot or a claim.
    if not isinstance(event, ItemStatusChanged) or event.status != "error" or event.service == NAME:
        return ()
    job = await jobs.get(event.job_id)
    if job is not None:
        await intake.release_failed_file(job, event.item_id)
    return ()


def _subjects_of(event: Event) -> tuple[str, ...]:
    if isinstance(event, ArchiveExtracted):
        return event.subject_ids
    if isinstance(event, ReportParsed) and event.subject_id:
        return (event.subject_id,)
    return ()


async def redact_job_file_names(
    event: Event, *, jobs: JobRecords, vault: PhiVault
) -> Sequence[Emit]:
    subject_ids = _subjects_of(event)
    if not subject_ids:
        return ()
    job = await jobs.get(event.job_id)
    if job is None:
        return ()
    people = await vault.of_subjects(subject_ids)
    renamed = {}
    for item in job.items:
        name = item.filename
        for person in people:
            name = redact(name, subject_id=person.subject_id, mrn=person.mrn, name=person.name)
        if name == item.filename:
            continue
        renamed[item.item_id] = name
        for person in {p.subject_id: p for p in people}.values():
            if person.subject_id in name:
                await vault.record(
                    PhiRecord(
                        subject_id=person.subject_id,
                        source_kind="archive_name",
                        job_id=job.job_id,
                        item_id=item.item_id,
                        site=person.site,
                        mrn=person.mrn,
                        name=person.name,
                        original=item.filename,
                    )
                )
    if renamed:  # the originals are in the vault before they leave the job record
        await jobs.rename_items(job.job_id, renamed)
    return ()


def routes(platform: Platform) -> dict[str, Route]:
    jobs = JobRecords(docs=platform.docs)
    intake = Intake(docs=platform.docs, store=platform.store, accounts=Accounts(docs=platform.docs))
    vault = PhiVault(docs=platform.docs)

    async def on_status(event: Event) -> Sequence[Emit]:
        return await release_failed_file(event, jobs=jobs, intake=intake)

    async def on_patients_known(event: Event) -> Sequence[Emit]:
        return await redact_job_file_names(event, jobs=jobs, vault=vault)

    # Giving back is idempotent (the claim's deletion decides who gives the quota back), and
    # so is redacting (a name already redacted stays as it is).
    return {
        ITEM_STATUS: Route(on_status, idempotent=True),
        ARCHIVES_EXTRACTED: Route(on_patients_known, idempotent=True),
        REPORTS_PARSED: Route(on_patients_known, idempotent=True),
    }
