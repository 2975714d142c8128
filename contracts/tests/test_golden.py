"""Golden events: one committed, realistic wire message per event type, in `golden/`.

Each file is a complete CloudEvent as a producer wrote it (synthetic ids, no PHI), named
`<event type>.json`. They are written once and never edited: they are what consumers and
other hospital systems may still have in their logs, queues and dead-letter topics.

A breaking change to a payload makes a NEW version (`...v2`, a new model in EVENT_TYPES) and
an entry in UPCASTERS mapping the old type to the new one. The old fixture stays here
untouched and must keep decoding, now through the upcaster, to the current model; add a
fixture for the new version beside it. So: adding an event type forces adding a fixture, and
changing a model in place so that an old fixture no longer decodes fails this test.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from contracts.docs import event_schema
from contracts.envelope import CloudEvent
from contracts.events import EVENT_TYPES, UPCASTERS, decode

GOLDEN_DIR = Path(__file__).parent / "golden"
GOLDEN_FILES = sorted(GOLDEN_DIR.glob("*.json"))
CURRENT_FILES = [p for p in GOLDEN_FILES if p.stem in EVENT_TYPES]


def _current_type(event_type: str) -> str:
    """The type an (old) event type decodes to, following the upcaster chain."""
    seen = {event_type}
    while event_type in UPCASTERS:
        event_type = UPCASTERS[event_type][0]
        assert event_type not in seen, f"upcaster loop through {event_type}"
        seen.add(event_type)
    return event_type


def _load(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(path.read_bytes())
    return loaded


def test_there_are_golden_files() -> None:
    assert GOLDEN_FILES, f"no golden events in {GOLDEN_DIR}"


def test_every_event_type_has_a_golden_file() -> None:
    missing = sorted(set(EVENT_TYPES) - {p.stem for p in GOLDEN_FILES})
    assert missing == [], f"add golden/<type>.json for the new event types {missing}"


@pytest.mark.parametrize("path", GOLDEN_FILES, ids=lambda p: p.stem)
def test_golden_event_still_decodes_to_its_current_model(path: Path) -> None:
    envelope = CloudEvent.model_validate_json(path.read_bytes())

    event = decode(envelope)

    assert path.name == f"{envelope.type}.json"
    assert type(event) is EVENT_TYPES[_current_type(envelope.type)]
    assert envelope.subject == event.job_id


@pytest.mark.parametrize("path", CURRENT_FILES, ids=lambda p: p.stem)
def test_golden_event_validates_against_the_generated_schema(path: Path) -> None:
    schema = event_schema(EVENT_TYPES[path.stem])
    validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)

    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(_load(path))]

    assert errors == []


@pytest.mark.parametrize("path", CURRENT_FILES, ids=lambda p: p.stem)
def test_golden_event_of_a_current_type_re_encodes_to_the_same_data(path: Path) -> None:
    # If this fails the wire form of a current type changed (a field renamed, retyped, added):
    # that is a breaking change for strict consumers, so make a new version instead.
    envelope = CloudEvent.model_validate_json(path.read_bytes())

    assert decode(envelope).model_dump(mode="json") == envelope.data


def test_golden_events_carry_no_patient_identifying_fields() -> None:
    forbidden = {"name", "patient_name", "mrn", "dob", "birth_date", "date_of_birth", "filename"}

    def keys(node: Any) -> set[str]:
        if isinstance(node, dict):
            return set(node) | {k for v in node.values() for k in keys(v)}
        if isinstance(node, list):
            return {k for v in node for k in keys(v)}
        return set()

    for path in GOLDEN_FILES:
        assert keys(_load(path)["data"]) & forbidden == set(), path.name
