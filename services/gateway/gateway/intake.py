"""Uploads in flight: what a request has taken (quota, MD5 claims, raw objects) before its job
exists, so that it becomes final only with the job, and is given back whole otherwise.

A request writes an `upload_requests` document first (owner process, lease), then for each
file: one quota slot, the raw object under ``raw/<job>/``, the file's MD5 claim. When the job
record is written the request document is deleted and everything it took is the job's.
A request that is refused or fails gives back exactly what it took, once. A request whose
process died (kill -9, power cut) is found by `sweep`, at start-up and on a timer: its lease
ran out, or its process is known dead on this machine. Its raw objects, claims and quota are
given back, so the same files can be uploaded again.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from contracts.envelope import utcnow
from gateway.accounts import Accounts
from gateway.jobs import JobRecord, JobRecords
from kit.blobs import RAW
from kit.ports import Documents, DuplicateKey, Index, ObjectStore
from kit.process import ProcessIdentity, current_process

__all__ = [
    "CLAIMS",
    "INDEXES",
    "LEASE_SECONDS",
    "REQUESTS",
    "Claimed",
    "Intake",
    "SweepResult",
]

log = logging.getLogger(__name__)

REQUESTS, CLAIMS = "upload_requests", "file_hashes"
# Longer than any one file takes to arrive (64 MB at 1 Mbit/s is about 9 minutes); the lease
# is renewed at every file, and a dead process on this machine is found without waiting.
LEASE_SECONDS = 30 * 60.0
INDEXES = {CLAIMS: (Index(fields=(("job_id", 1),)),)}


class Claimed(Exception):
    """These bytes are already in the system (or in another upload in flight)."""


@dataclass
class PendingUpload:
    """One request's holdings while it streams."""

    intake: Intake
    job_id: str
    username: str
    quota_taken: int = 0
    claims: set[str] = field(default_factory=set)
    _renewed: float = field(default_factory=time.monotonic)

    async def take_quota(self, *, quota: int) -> bool:
        """One more file against the user's lifetime quota; False when it is used up."""
        await self._renew()
        if not await self.intake.accounts.reserve_upload(self.username, quota=quota):
            return False
        # After the user's count: a crash between the two loses the user one slot rather
        # than letting the sweep give back one that was never taken.
        self.quota_taken += 1
        await self.intake.requests.update(self.job_id, inc={"quota_taken": 1})
        return True

    async def give_back_quota(self) -> None:
        """One slot taken by this request, for a file refused after all."""
        self.quota_taken -= 1
        await self.intake.requests.update(self.job_id, inc={"quota_taken": -1})
        await self.intake.accounts.release_upload(self.username)

    async def claim(self, md5: str, *, item_id: str) -> None:
        """Claim the file's MD5 for this job; raises `Claimed` for a duplicate."""
        if md5 in self.claims:
            raise Claimed(md5)
        doc = {"_id": md5, "job_id": self.job_id, "item_id": item_id, "at": utcnow().isoformat()}
        try:
            await self.intake.claims.insert(doc)
        except DuplicateKey:
            # The claim may be an orphan of a crashed request not swept yet: sweep it now
            # rather than refuse the file as a duplicate.
            if not await self.intake.release_if_orphaned_claim(md5):
                raise Claimed(md5) from None
            try:
                await self.intake.claims.insert(doc)
            except DuplicateKey:
                raise Claimed(md5) from None
        self.claims.add(md5)

    async def unclaim(self, md5: str) -> None:
        if md5 in self.claims:
            self.claims.discard(md5)
            await self.intake.claims.delete(md5)

    async def give_back(self) -> None:
        """Refused or failed: release every claim and every quota slot, exactly once."""
        await self.intake.release(
            self.job_id, username=self.username, quota=self.quota_taken, claims=set(self.claims)
        )
        self.quota_taken, self.claims = 0, set()

    async def confirm(self) -> None:
        """The job record is written: what the request took is the job's now."""
        await self.intake.requests.delete(self.job_id)

    async def _renew(self) -> None:
        if time.monotonic() - self._renewed > LEASE_SECONDS / 4:
            self._renewed = time.monotonic()
            await self.intake.requests.update(
                self.job_id, set={"lease_until": time.time() + LEASE_SECONDS}
            )


@dataclass(frozen=True)
class SweepResult:
    requests: int = 0
    objects: int = 0
    claims: int = 0
    quota: int = 0


class Intake:
    """The gateway's ledger of uploads in flight."""

    def __init__(self, *, docs: Documents, store: ObjectStore, accounts: Accounts) -> None:
        self.requests = docs.collection(REQUESTS)
        self.claims = docs.collection(CLAIMS)
        self.store = store
        self.accounts = accounts
        self.jobs = JobRecords(docs=docs)

    async def begin(self, *, job_id: str, username: str) -> PendingUpload:
        await self.requests.insert(
            {
                "_id": job_id,
                "username": username,
                "owner": current_process().as_doc(),
                "lease_until": time.time() + LEASE_SECONDS,
                "quota_taken": 0,
                "created_at": utcnow().isoformat(),
            }
        )
        return PendingUpload(intake=self, job_id=job_id, username=username)

    async def release(
        self, job_id: str, *, username: str, quota: int, claims: set[str]
    ) -> SweepResult:
        """Give back what a request took, then forget it. Every step can be repeated.

        The documents first (claims that are this job's, then the quota, zeroed on the
        request before it is given back so no repeat gives it twice), then the raw objects.
        When the object store is down (the very outage that refused the upload), the request
        stays with its lease ended, and the next sweep removes the objects once the store is
        back: the user has the quota and the claims back at once."""
        released_claims = 0
        for md5 in claims:
            claim = await self.claims.get(md5)
            if claim is not None and claim.get("job_id") == job_id:
                await self.claims.delete(md5)
                released_claims += 1
        await self.requests.update(job_id, set={"quota_taken": 0, "lease_until": 0})
        if quota:
            await self.accounts.release_upload(username, count=quota)
        objects = 0
        async for listed in self.store.list(RAW, prefix=f"{job_id}/"):
            await self.store.delete(RAW, listed.key)
            objects += 1
        await self.requests.delete(job_id)
        return SweepResult(requests=1, objects=objects, claims=released_claims, quota=quota)

    async def release_failed_file(self, job: JobRecord, item_id: str) -> bool:
        """A file that failed in processing does not count against the quota and does not
        block its bytes: "Re-upload only the failed files with corrections" (the fundus help)
        must not answer "Duplicate file". Idempotent; whether this call released it."""
        item = job.item(item_id)
        if item is None or item.md5 is None:
            return False
        claim = await self.claims.get(item.md5)
        if claim is None or claim.get("job_id") != job.job_id or claim.get("item_id") != item_id:
            return False
        if not await self.claims.delete(item.md5):
            return False  # another delivery of the same failure got there first
        await self.accounts.release_upload(job.uploader)
        return True

    async def release_if_orphaned_claim(self, md5: str) -> bool:
        """Release the request that holds this claim if it is an orphan; whether it was."""
        claim = await self.claims.get(md5)
        if claim is None:
            return True
        request = await self.requests.get(str(claim.get("job_id")))
        if request is None or not _orphaned(request):
            return False
        await self._release_request(request)
        return True

    async def sweep(self) -> SweepResult:
        """Give back what crashed requests left: at start-up and on a timer."""
        totals = SweepResult()
        for request in await self.requests.find():
            if _orphaned(request):
                result = await self._release_request(request)
                totals = SweepResult(
                    requests=totals.requests + result.requests,
                    objects=totals.objects + result.objects,
                    claims=totals.claims + result.claims,
                    quota=totals.quota + result.quota,
                )
        if totals.requests:
            log.warning(
                "gave back what %d interrupted upload(s) left: %d object(s), "
                "%d claim(s), %d quota slot(s)",
                totals.requests,
                totals.objects,
                totals.claims,
                totals.quota,
            )
        return totals

    async def _release_request(self, request: dict[str, object]) -> SweepResult:
        job_id = str(request["_id"])
        if await self.jobs.get(job_id) is not None:
            # The job was written just before the crash: everything is the job's.
            await self.requests.delete(job_id)
            return SweepResult()
        claims = {str(c["_id"]) for c in await self.claims.find({"job_id": job_id})}
        quota = request.get("quota_taken")
        return await self.release(
            job_id,
            username=str(request.get("username")),
            quota=quota if isinstance(quota, int) else 0,
            claims=claims,
        )


def _orphaned(request: dict[str, object]) -> bool:
    lease = request.get("lease_until")
    if not isinstance(lease, int | float) or lease < time.time():
        return True
    owner = ProcessIdentity.from_doc(request.get("owner"))
    return owner is None or owner.known_dead()
