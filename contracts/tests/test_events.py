"""The payload models, the envelope round trip, upcasting and the topic table."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from contracts import events as events_module
from contracts.envelope import SOURCE_PREFIX, CloudEvent
from contracts.events import (
    EVENT_TYPES,
    ArchiveEntryExtracted,
    ArchiveExtracted,
    DicomAnonymized,
    DirectUploadMetadata,
    Event,
    ImageAnonymized,
    Ingested,
    ItemStatusChanged,
    JobOpened,
    ObjectRef,
    PipelineRunFinished,
    PipelineRunStarted,
    RejectedEntry,
    ReportParsed,
    UnknownEventType,
    UploadDeleted,
    UploadMetadataChanged,
    UploadReceived,
    ValueChange,
    decode,
    encode,
)
from contracts.topics import ALL_TOPICS, dead_letter

JOB = "5f1c9e2a7b3d4c6e8a0b1d2f3e4c5a6b"
ITEM = "a1b2c3d4e5f64a7b8c9d0e1f2a3b4c5d"
AT = datetime(2025, 3, 14, 9, 26, 53, 589000, tzinfo=UTC)


def _ref(bucket: str, suffix: str = ".jpg") -> ObjectRef:
    return ObjectRef(
        bucket=bucket,
        key=f"{JOB}/{ITEM}{suffix}",
        size=1234,
        md5="0" * 32,
        sha256="f" * 64,
        content_type="image/jpeg",
    )


_META = DirectUploadMetadata(
    hospital_id="hosp-017",
    lab_unit_id="lab-03",
    camera_id="cam-fop-12",
    disease_id="dr",
    area_id="area-09",
    mydriatic=True,
)

# One instance per event type, with every optional field set so nothing is lost unnoticed.
SAMPLES: dict[type[Event], Event] = {
    UploadReceived: UploadReceived(
        job_id=JOB,
        item_id=ITEM,
        kind="image",
        object=_ref("raw"),
        uploader_id="u-0042",
        metadata=_META,
        received_at=AT,
    ),
    ArchiveEntryExtracted: ArchiveEntryExtracted(
        job_id=JOB,
        archive_item_id="archive-1",
        item_id=ITEM,
        entry_index=2,
        entry_kind="pdf",
        layout="remidio-fop",
        object=_ref("reports", ".pdf"),
        uploader_id="u-0042",
        metadata=_META,
    ),
    ArchiveExtracted: ArchiveExtracted(
        job_id=JOB,
        item_id=ITEM,
        layout="generic",
        entry_count=3,
        rejected=(RejectedEntry(entry_index=1, reason="Unsafe path"),),
    ),
    ReportParsed: ReportParsed(
        job_id=JOB,
        item_id=ITEM,
        report_kind="glaucoma",
        method="ocr",
        subject_id="subj-9c4e1b7a",
        findings={"right_eye": "Suspect", "left_eye": "Normal"},
    ),
    ImageAnonymized: ImageAnonymized(
        job_id=JOB,
        item_id=ITEM,
        uploader_id="u-0042",
        source=_ref("raw"),
        clean=_ref("clean"),
        thumbnail=_ref("clean", ".thumb.jpg"),
        width=2592,
        height=1944,
        masked=True,
        review_reason="Text near the field of view",
        metadata=_META,
    ),
    DicomAnonymized: DicomAnonymized(
        job_id=JOB,
        item_id=ITEM,
        source=_ref("scans", ".tgz"),
        clean=_ref("clean", ".tgz"),
        removed_elements=41,
    ),
    Ingested: Ingested(job_id=JOB, item_id=ITEM, record_id="rec-000318", kind="scan"),
    PipelineRunStarted: PipelineRunStarted(
        job_id=JOB, run_id="run-7", item_id=ITEM, trigger="manual"
    ),
    PipelineRunFinished: PipelineRunFinished(
        job_id=JOB,
        run_id="run-7",
        item_id=ITEM,
        outcome="failure",
        exit_code=3,
        message="Candidate not found",
    ),
    JobOpened: JobOpened(job_id=JOB, kind="archive", item_ids=(ITEM, "b" * 32), opened_at=AT),
    ItemStatusChanged: ItemStatusChanged(
        job_id=JOB,
        item_id=ITEM,
        status="error",
        reason="Unsupported file type",
        at=AT,
        service="zip-extractor",
        parent_item_id="archive-1",
    ),
    UploadMetadataChanged: UploadMetadataChanged(
        job_id=JOB,
        item_id=ITEM,
        changes={
            "disease_id": ValueChange(old="dr", new="glaucoma"),
            "mydriatic": ValueChange(old=False, new=True),
        },
        changed_by="dm-0007",
        at=AT,
    ),
    UploadDeleted: UploadDeleted(job_id=JOB, item_id=ITEM, deleted_by="dm-0007", at=AT),
}

ALL_MODELS = sorted(EVENT_TYPES.values(), key=lambda cls: cls.event_type)


def _ids(cls: type[Event]) -> str:
    return cls.__name__


def test_every_event_type_has_a_sample() -> None:
    assert set(SAMPLES) == set(EVENT_TYPES.values())


def test_event_types_are_unique_versioned_and_keyed_by_their_own_type() -> None:
    for event_type, cls in EVENT_TYPES.items():
        assert cls.event_type == event_type
        assert event_type.startswith(events_module.TYPE_PREFIX)
        version = event_type.rsplit(".", 1)[1]
        assert version.startswith("v") and version[1:].isdigit(), event_type


@pytest.mark.parametrize("cls", ALL_MODELS, ids=_ids)
def test_encode_to_bytes_and_decode_gives_back_an_equal_event(cls: type[Event]) -> None:
    event = SAMPLES[cls]
    envelope = encode(event, source="gateway")

    wire = envelope.to_bytes()
    received = CloudEvent.from_bytes(wire)
    decoded = decode(received)

    assert type(decoded) is cls
    assert decoded == event
    assert received == envelope
    assert received.type == cls.event_type
    assert received.source == SOURCE_PREFIX + "gateway"
    assert received.subject == event.job_id
    assert received.specversion == "1.0"
    assert json.loads(wire)["data"] == event.model_dump(mode="json")


@pytest.mark.parametrize("cls", ALL_MODELS, ids=_ids)
def test_models_are_frozen(cls: type[Event]) -> None:
    event = SAMPLES[cls]
    with pytest.raises(ValidationError, match="frozen"):
        setattr(event, "job_id", "another-job")  # noqa: B010 (mypy would refuse the attribute)


@pytest.mark.parametrize("cls", ALL_MODELS, ids=_ids)
def test_an_unknown_field_is_rejected(cls: type[Event]) -> None:
    data: dict[str, Any] = SAMPLES[cls].model_dump(mode="json")
    data["patient_name"] = "must never travel"
    with pytest.raises(ValidationError, match=r"extra_forbidden|Extra inputs"):
        cls.model_validate(data)
    envelope = CloudEvent.new(source=SOURCE_PREFIX + "test", type=cls.event_type, data=data)
    with pytest.raises(ValidationError):
        decode(envelope)


def test_nested_models_and_the_envelope_reject_unknown_fields_too() -> None:
    ref = _ref("raw").model_dump()
    with pytest.raises(ValidationError):
        ObjectRef.model_validate({**ref, "original_filename": "x.jpg"})
    envelope = encode(SAMPLES[Ingested], source="ingest").model_dump(mode="json")
    with pytest.raises(ValidationError):
        CloudEvent.model_validate({**envelope, "unknownattr": "x"})


def test_an_unknown_event_type_raises_unknown_event_type() -> None:
    envelope = CloudEvent.new(
        source=SOURCE_PREFIX + "elsewhere",
        type="org.imaging-uploader.never.heard.of.v1",
        data={"job_id": JOB},
    )
    with pytest.raises(UnknownEventType, match=r"never\.heard\.of"):
        decode(envelope)


def test_an_old_event_type_is_upcast_to_the_current_model(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A pretend v0 of item.ingested named the record `catalogue_id` and had no kind.
    old_type = "org.imaging-uploader.item.ingested.v0"

    def upcast_v0(data: dict[str, Any]) -> dict[str, Any]:
        rest = {k: v for k, v in data.items() if k != "catalogue_id"}
        return {**rest, "record_id": data["catalogue_id"], "kind": "image"}

    monkeypatch.setitem(events_module.UPCASTERS, old_type, (Ingested.event_type, upcast_v0))
    envelope = CloudEvent.new(
        source=SOURCE_PREFIX + "ingest",
        type=old_type,
        data={"job_id": JOB, "item_id": ITEM, "catalogue_id": "rec-1"},
    )

    decoded = decode(CloudEvent.from_bytes(envelope.to_bytes()))

    assert decoded == Ingested(job_id=JOB, item_id=ITEM, record_id="rec-1", kind="image")


def test_upcasters_chain_through_several_old_versions(monkeypatch: pytest.MonkeyPatch) -> None:
    v0 = "org.imaging-uploader.pipeline.run.started.v0"
    v_half = "org.imaging-uploader.pipeline.run.started.v0_5"
    monkeypatch.setitem(events_module.UPCASTERS, v0, (v_half, lambda d: {**d, "trigger": "auto"}))
    monkeypatch.setitem(
        events_module.UPCASTERS,
        v_half,
        (PipelineRunStarted.event_type, lambda d: {**d, "run_id": "run-" + d["item_id"]}),
    )
    envelope = CloudEvent.new(
        source=SOURCE_PREFIX + "ingest", type=v0, data={"job_id": JOB, "item_id": ITEM}
    )

    assert decode(envelope) == PipelineRunStarted(
        job_id=JOB, item_id=ITEM, run_id="run-" + ITEM, trigger="auto"
    )


def test_every_topic_lists_only_known_event_types() -> None:
    for topic in ALL_TOPICS:
        assert topic.events, topic.name
        for event_type in topic.events:
            assert event_type in EVENT_TYPES, (topic.name, event_type)


def test_every_event_type_is_published_on_some_topic() -> None:
    on_a_topic = {event_type for topic in ALL_TOPICS for event_type in topic.events}
    assert set(EVENT_TYPES) - on_a_topic == set()


def test_topic_names_are_unique_and_distinct_from_their_dead_letter_topics() -> None:
    names = [topic.name for topic in ALL_TOPICS]
    assert len(names) == len(set(names))
    assert all(topic.partitions >= 1 for topic in ALL_TOPICS)
    assert not {dead_letter(name) for name in names} & set(names)


def test_a_received_event_without_an_id_is_refused_rather_than_given_a_new_one() -> None:
    # Consumers deduplicate on the id; inventing one on decode would defeat that.
    wire = b'{"specversion":"1.0","source":"/x","type":"t","time":"2026-01-01T00:00:00Z","data":{}}'
    with pytest.raises(ValidationError):
        CloudEvent.from_bytes(wire)
