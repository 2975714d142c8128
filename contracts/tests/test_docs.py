"""The generated JSON Schemas and AsyncAPI document: committed, current and valid."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped, unused-ignore]
from jsonschema import Draft7Validator, Draft202012Validator

from contracts.docs import (
    ASYNCAPI_FILE,
    JSON_SCHEMA_DIALECT,
    SCHEMAS_DIR,
    asyncapi_document,
    event_schema,
    main,
    write_docs,
)
from contracts.events import EVENT_TYPES, Ingested, ItemStatusChanged
from contracts.topics import ALL_TOPICS

DOCS_DIR = Path(__file__).resolve().parents[2] / "docs"
GOLDEN_DIR = Path(__file__).parent / "golden"
REGENERATE = "regenerate with `uv run python -m contracts.docs docs/`"


def _committed_asyncapi() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DOCS_DIR / ASYNCAPI_FILE).read_text())
    return loaded


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            yield ref
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def _resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), f"not a local reference: {ref}"
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _golden(event_type: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((GOLDEN_DIR / f"{event_type}.json").read_bytes())
    return loaded


def test_committed_docs_are_up_to_date(tmp_path: Path) -> None:
    written = write_docs(tmp_path)

    generated = {p.relative_to(tmp_path).as_posix() for p in written}
    committed = {
        p.relative_to(DOCS_DIR).as_posix() for p in (DOCS_DIR / SCHEMAS_DIR).glob("*.json")
    } | ({ASYNCAPI_FILE} if (DOCS_DIR / ASYNCAPI_FILE).exists() else set())
    assert committed == generated, REGENERATE
    stale = [
        name
        for name in sorted(generated)
        if (tmp_path / name).read_bytes() != (DOCS_DIR / name).read_bytes()
    ]
    assert stale == [], REGENERATE


def test_generating_twice_gives_the_same_bytes(tmp_path: Path) -> None:
    first = {p.name: p.read_bytes() for p in write_docs(tmp_path / "a")}
    second = {p.name: p.read_bytes() for p in write_docs(tmp_path / "b")}
    assert first == second


def test_write_docs_removes_schemas_of_event_types_that_no_longer_exist(tmp_path: Path) -> None:
    stale = tmp_path / SCHEMAS_DIR / "org.imaging-uploader.gone.v1.json"
    stale.parent.mkdir(parents=True)
    stale.write_text("{}")

    write_docs(tmp_path)

    assert not stale.exists()


def test_main_writes_the_docs_into_the_given_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(tmp_path)]) == 0

    assert (tmp_path / ASYNCAPI_FILE).is_file()
    assert len(list((tmp_path / SCHEMAS_DIR).glob("*.json"))) == len(EVENT_TYPES)
    assert ASYNCAPI_FILE in capsys.readouterr().out


def test_there_is_one_committed_schema_per_event_type() -> None:
    names = {p.stem for p in (DOCS_DIR / SCHEMAS_DIR).glob("*.json")}
    assert names == set(EVENT_TYPES), REGENERATE


@pytest.mark.parametrize("event_type", sorted(EVENT_TYPES))
def test_every_schema_is_a_valid_draft_2020_12_schema(event_type: str) -> None:
    schema = json.loads((DOCS_DIR / SCHEMAS_DIR / f"{event_type}.json").read_bytes())

    Draft202012Validator.check_schema(schema)

    assert schema["$schema"] == JSON_SCHEMA_DIALECT
    assert schema["properties"]["type"]["const"] == event_type
    assert schema["properties"]["specversion"]["const"] == "1.0"
    assert {"specversion", "id", "source", "type", "data"} <= set(schema["required"])


@pytest.mark.parametrize("event_type", sorted(EVENT_TYPES))
def test_every_schema_is_self_contained(event_type: str) -> None:
    schema = event_schema(EVENT_TYPES[event_type])
    for ref in _refs(schema):
        assert ref.startswith("#/$defs/"), ref
        _resolve(schema, ref)


def test_a_schema_rejects_another_event_type_and_unknown_payload_fields() -> None:
    validator = Draft202012Validator(event_schema(Ingested))
    ingested = _golden(Ingested.event_type)
    assert validator.is_valid(ingested)

    assert not validator.is_valid(_golden(ItemStatusChanged.event_type))
    assert not validator.is_valid({**ingested, "data": {**ingested["data"], "mrn": "x"}})
    assert not validator.is_valid({**ingested, "specversion": "0.3"})


def test_asyncapi_document_is_version_3_0_0_with_a_channel_per_topic() -> None:
    document = _committed_asyncapi()

    assert document["asyncapi"] == "3.0.0"
    channels = document["channels"]
    assert sorted(c["address"] for c in channels.values()) == sorted(t.name for t in ALL_TOPICS)
    for topic in ALL_TOPICS:
        (channel,) = [c for c in channels.values() if c["address"] == topic.name]
        assert channel["description"] == topic.description
        assert channel["bindings"]["kafka"]["partitions"] == topic.partitions
        names = [_resolve(document, m["$ref"])["name"] for m in channel["messages"].values()]
        assert sorted(names) == sorted(topic.events)


def test_asyncapi_has_one_receive_operation_per_channel() -> None:
    document = _committed_asyncapi()

    operations = list(document["operations"].values())

    assert all(op["action"] == "receive" for op in operations)
    channel_refs = sorted(op["channel"]["$ref"] for op in operations)
    assert channel_refs == sorted(f"#/channels/{cid}" for cid in document["channels"])
    assert "receive" in document["info"]["description"]


def test_asyncapi_messages_describe_every_event_type() -> None:
    document = _committed_asyncapi()
    messages = document["components"]["messages"].values()

    assert sorted(m["name"] for m in messages) == sorted(EVENT_TYPES)
    for message in messages:
        assert message["title"] == EVENT_TYPES[message["name"]].__name__
        assert message["contentType"] in ("application/cloudevents+json", "application/json")
        headers = _resolve(document, message["headers"]["$ref"])
        assert "traceparent" in headers["properties"]
        payload = message["payload"]
        assert payload["properties"]["type"]["const"] == message["name"]
        Draft7Validator.check_schema(payload)


def test_every_reference_in_the_asyncapi_document_resolves() -> None:
    document = _committed_asyncapi()
    refs = list(_refs(document))
    assert refs
    for ref in refs:
        _resolve(document, ref)


@pytest.mark.parametrize("event_type", sorted(EVENT_TYPES))
def test_golden_event_validates_against_its_asyncapi_message_payload(event_type: str) -> None:
    # AsyncAPI 3 schemas are a JSON Schema draft-07 superset, so check with a draft-07 validator;
    # the payload's `#/components/schemas/...` refs resolve against the whole document.
    document = asyncapi_document()
    (message_id,) = [
        key for key, m in document["components"]["messages"].items() if m["name"] == event_type
    ]
    schema = {**document, "$ref": f"#/components/messages/{message_id}/payload"}

    errors = [e.message for e in Draft7Validator(schema).iter_errors(_golden(event_type))]

    assert errors == []
