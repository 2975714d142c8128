"""The PHI vault's helpers: pseudonymous subject ids and redaction of names and MRNs."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from kit.docs_sqlite import SqliteDocuments
from kit.phi import PhiRecord, PhiVault, load_subject_key, redact, subject_id

KEY = b"a site's secret key"


def test_the_same_person_at_the_same_site_always_gets_the_same_subject_id() -> None:
    first = subject_id(mrn="12345678", site="city-general", key=KEY)

    assert first == subject_id(mrn=" 12345678 ", site="city-general", key=KEY)
    assert first.startswith("S") and len(first) == 16
    assert "12345678" not in first
    assert first != subject_id(mrn="12345678", site="rural-hospital", key=KEY)
    assert first != subject_id(mrn="12345679", site="city-general", key=KEY)
    assert first != subject_id(mrn="12345678", site="city-general", key=b"another key")


def test_without_a_key_no_subject_id_is_made() -> None:
    with pytest.raises(ValueError, match="subject key"):
        subject_id(mrn="12345678", site="city-general", key=b"")


def test_names_and_mrns_are_redacted_in_any_case_and_spelling() -> None:
    text = "ravi_kumar_12345678_31-01-2025/FOP/x.jpg, RAVI KUMAR (12345678), Ravi.Kumar"

    redacted = redact(text, subject_id="S1", mrn="12345678", name="Ravi Kumar")

    assert redacted == "S1_S1_31-01-2025/FOP/x.jpg, S1 (S1), S1"
    assert redact("12345678_01-02-2025_1.02.03.004_PM.zip", subject_id="S1", mrn="12345678") == (
        "S1_01-02-2025_1.02.03.004_PM.zip"
    )
    assert redact("nothing to hide", subject_id="S1", mrn=None, name=None) == "nothing to hide"


def test_processes_starting_together_share_one_generated_key(tmp_path: Path) -> None:
    with ThreadPoolExecutor(8) as pool:
        keys = set(pool.map(lambda _: load_subject_key("", tmp_path), range(16)))

    assert len(keys) == 1
    assert (tmp_path / "subject-key").stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["subject-key"]
    assert load_subject_key("configured", tmp_path) == b"configured"
    assert os.access(tmp_path / "subject-key", os.R_OK)


async def test_the_vault_keeps_one_record_per_source_and_finds_them_by_subject(
    tmp_path: Path,
) -> None:
    docs = SqliteDocuments(path=tmp_path / "docs.sqlite3")
    vault = PhiVault(docs=docs)
    record = PhiRecord(
        subject_id="S1",
        source_kind="patient_folder",
        job_id="j",
        item_id="a",
        mrn="12345678",
        name="Ravi Kumar",
        capture_date="2025-01-31",
    )
    try:
        await vault.record(record)
        await vault.record(record)  # a redelivery
        await vault.record(record.model_copy(update={"source_kind": "report", "item_id": "r"}))
        await vault.record(record.model_copy(update={"subject_id": "S2"}))
        mine = await vault.of_subject("S1")
        both = await vault.of_subjects(["S1", "S2"])
    finally:
        await docs.close()

    assert [(r.source_kind, r.item_id) for r in mine] == [("patient_folder", "a"), ("report", "r")]
    assert all(r.recorded_at for r in mine)
    assert len(both) == 3
