"""The PHI vault: the only place that holds patients' names, MRNs and capture dates of the
people behind pseudonymous subject ids, and the original names those were found in.

Everything else (object keys, events, logs, URLs, other documents) carries the `subject_id`,
a keyed hash of the MRN and the site: the same person at the same site gets the same id in
every upload, and nobody without the key can go back from the id to the MRN.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from contracts.envelope import utcnow
from kit.ports import AnyOf, Documents, Index

__all__ = [
    "INDEXES",
    "VAULT",
    "PhiRecord",
    "PhiVault",
    "SourceKind",
    "load_subject_key",
    "redact",
    "subject_id",
]

VAULT = "phi_vault"
INDEXES = {VAULT: (Index(fields=(("subject_id", 1),)),)}
SourceKind = Literal["patient_folder", "report", "archive_name", "entry_name"]


def subject_id(*, mrn: str, site: str, key: bytes) -> str:
    """The pseudonymous id of the person with this MRN at this site (the hospital the upload
    was made for: an MRN is only unique within one)."""
    if not key:
        raise ValueError("no subject key: see PlatformSettings.subject_key")
    normalised = re.sub(r"\s+", "", mrn).upper()
    digest = hmac.new(key, f"{site}\x00{normalised}".encode(), hashlib.sha256).hexdigest()
    return "S" + digest[:15]


def load_subject_key(configured: str, data_dir: Path) -> bytes:
    """The configured key, else one made on first start and kept in the data folder (0600),
    shared by every process that uses that folder."""
    if configured:
        return configured.encode()
    path = data_dir / "subject-key"
    if not path.exists():
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = data_dir / f".subject-key.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(48))
        try:
            os.link(tmp, path)  # atomic: two processes starting at once keep one key
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_text().strip().encode()


def _name_pattern(name: str) -> str:
    words = [re.escape(w) for w in re.split(r"[\s_.,-]+", name) if w]
    return r"[\s_.,-]*".join(words)


def redact(text: str, *, subject_id: str, mrn: str | None = None, name: str | None = None) -> str:
    """`text` with the patient's MRN and name (in any case, words joined by spaces,
    underscores, dots or dashes) replaced by the subject id."""
    patterns = []
    if name and name.strip():
        patterns.append(_name_pattern(name))
    if mrn and mrn.strip():
        patterns.append(re.escape(mrn.strip()))
    if not patterns:
        return text
    return re.sub("|".join(f"(?:{p})" for p in patterns), subject_id, text, flags=re.IGNORECASE)


class PhiRecord(BaseModel):
    """One place a person's identity was found: a patient folder, a report, a file name."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    subject_id: str
    source_kind: SourceKind
    job_id: str
    item_id: str
    site: str | None = None
    mrn: str | None = None
    name: str | None = None
    capture_date: str | None = None
    original: str | None = None  # the name or path as it was (e.g. the archive's file name)
    recorded_at: str = ""


class PhiVault:
    """The repository of `PhiRecord`s. Writes are idempotent (one document per source), so
    several services may record what they found without coordinating."""

    def __init__(self, *, docs: Documents) -> None:
        self._collection = docs.collection(VAULT)

    async def record(self, record: PhiRecord) -> None:
        doc_id = f"{record.subject_id}:{record.source_kind}:{record.item_id}"
        stamped = (
            record
            if record.recorded_at
            else record.model_copy(update={"recorded_at": utcnow().isoformat()})
        )
        await self._collection.put({"_id": doc_id, **stamped.model_dump(mode="json")})

    async def of_subject(self, subject_id: str) -> list[PhiRecord]:
        found = await self._collection.find({"subject_id": subject_id})
        return sorted((PhiRecord.model_validate(d) for d in found), key=lambda r: r.recorded_at)

    async def of_subjects(self, subject_ids: Iterable[str]) -> list[PhiRecord]:
        wanted = list(dict.fromkeys(subject_ids))
        if not wanted:
            return []
        found = await self._collection.find({"subject_id": AnyOf(wanted)})
        return [PhiRecord.model_validate(d) for d in found]
