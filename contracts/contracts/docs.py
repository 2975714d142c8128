"""Generated documentation of the wire contracts: JSON Schemas and an AsyncAPI 3.0.0 document.

Everything here is derived from the pydantic models in `contracts.events`, the envelope in
`contracts.envelope` and the topics in `contracts.topics`, so the documents cannot drift from
the code; a test regenerates them and compares the bytes with the committed `docs/`.

    uv run python -m contracts.docs docs/
"""

from __future__ import annotations

import inspect
import json
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

# Without the types-PyYAML stubs yaml is untyped; the ignores go quiet once they are installed.
import yaml  # type: ignore[import-untyped, unused-ignore]

from contracts.envelope import SOURCE_PREFIX, CloudEvent
from contracts.events import EVENT_TYPES, TYPE_PREFIX, Event
from contracts.topics import ALL_TOPICS, TopicSpec, dead_letter

__all__ = [
    "ASYNCAPI_FILE",
    "JSON_SCHEMA_DIALECT",
    "SCHEMAS_DIR",
    "asyncapi_document",
    "event_schema",
    "main",
    "render_asyncapi",
    "render_schema",
    "write_docs",
]

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMAS_DIR = "schemas"
ASYNCAPI_FILE = "asyncapi.yaml"

# Structured-mode CloudEvents: the whole envelope is the Kafka record value, as JSON.
MESSAGE_CONTENT_TYPE = "application/cloudevents+json"
KAFKA_BINDING_VERSION = "0.5.0"
TRACE_HEADERS_SCHEMA = "TraceContextHeaders"

# The CloudEvents 1.0 required attributes, plus those our producers always write.
_REQUIRED_ATTRIBUTES = ("specversion", "id", "source", "type", "time", "datacontenttype", "data")

_ATTRIBUTE_DESCRIPTIONS = {
    "specversion": "CloudEvents specification version.",
    "id": "Unique per event; consumers deduplicate on it (delivery is at-least-once).",
    "source": f"The producing service, as `{SOURCE_PREFIX}<service>`.",
    "type": "The event type; its last segment is the version of the payload schema.",
    "time": "When the event was produced (RFC 3339).",
    "subject": "The job id the event belongs to.",
    "datacontenttype": "Content type of `data`.",
    "data": "The payload.",
}

_TRACEPARENT_PATTERN = "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"

_ASYNCAPI_DESCRIPTION = f"""\
The events imaging-uploader publishes, for the hospital systems that subscribe to them.

**Convention.** This document is written from the point of view of a *subscriber*: every
operation is a `receive` on one topic. imaging-uploader's own services are the only
publishers; other systems must not publish to these topics.

**Envelope.** Every record value is a CloudEvents 1.0 event in structured JSON mode
(`{MESSAGE_CONTENT_TYPE}`): the attributes `specversion`, `id`, `source`, `type`, `time`,
`subject` (the job id) and `datacontenttype`, with the payload in `data`. The message payload
schemas below describe that whole envelope; the same schemas, as standalone JSON Schema
draft 2020-12 files, are in `docs/{SCHEMAS_DIR}/<event type>.json`.

**Versions.** The type ends in a version (`.v1`). Payloads are strict (no unknown fields). A
breaking change makes a new type (`.v2`); consumers upcast the old type to the new model, so
example events of every version ever published keep decoding.

**Delivery.** At-least-once: deduplicate on the event `id`. No event carries PHI (names, MRNs,
birth dates, original filenames). The W3C trace context travels in the `traceparent` and
`tracestate` record headers. Records that fail processing after retries go to a dead-letter
topic named `<topic>{dead_letter("")}` with the same value and extra `x-dlq-*` headers, from
where they can be replayed.

**Transports.** In the distributed deployment each channel address is an Apache Kafka topic
(partition counts in the Kafka channel bindings); the embedded deployment keeps the same
topics and messages in a durable SQLite log.
"""


def _payload_schema(event_cls: type[Event], *, ref_template: str) -> dict[str, Any]:
    return event_cls.model_json_schema(mode="validation", ref_template=ref_template)


def _envelope_schema(event_cls: type[Event], data: dict[str, Any]) -> dict[str, Any]:
    """The CloudEvent envelope's own schema, narrowed to one event type."""
    envelope = CloudEvent.model_json_schema(mode="validation")
    if "$defs" in envelope:  # the envelope has no nested models; keep it that way
        raise ValueError("the CloudEvent envelope must not need $defs")
    properties: dict[str, Any] = envelope["properties"]
    for name, description in _ATTRIBUTE_DESCRIPTIONS.items():
        properties[name]["description"] = description
    properties["specversion"] = {
        **properties["specversion"],
        "const": "1.0",
        "type": "string",
    }
    properties["type"] = {
        "const": event_cls.event_type,
        "description": properties["type"]["description"],
        "title": "Type",
        "type": "string",
    }
    properties["data"] = {"description": _ATTRIBUTE_DESCRIPTIONS["data"], **data}
    missing = set(_REQUIRED_ATTRIBUTES) - set(properties)
    if missing:
        raise ValueError(f"the CloudEvent envelope lost attributes: {sorted(missing)}")
    summary = _summary(event_cls)
    return {
        "additionalProperties": envelope.get("additionalProperties", False),
        "description": f"CloudEvent of type `{event_cls.event_type}`. {summary}".strip(),
        "properties": properties,
        "required": list(_REQUIRED_ATTRIBUTES),
        "title": event_cls.__name__,
        "type": "object",
    }


def _summary(event_cls: type[Event]) -> str:
    doc = event_cls.__dict__.get("__doc__")
    return inspect.cleandoc(doc) if isinstance(doc, str) else ""


def event_schema(event_cls: type[Event]) -> dict[str, Any]:
    """A self-contained JSON Schema (draft 2020-12) of one event type's whole wire message.

    Nested models stay under the root's `$defs` (pydantic's `#/$defs/...` refs resolve there).
    """
    data = _payload_schema(event_cls, ref_template="#/$defs/{model}")
    defs = data.pop("$defs", {})
    schema = _envelope_schema(event_cls, data)
    schema["$schema"] = JSON_SCHEMA_DIALECT
    if defs:
        schema["$defs"] = defs
    return schema


def _trace_headers_schema() -> dict[str, Any]:
    return {
        "description": (
            "Record headers (Kafka headers; the embedded log keeps the same). The W3C Trace "
            "Context travels here, never in the event, when the producer was tracing."
        ),
        "properties": {
            "traceparent": {
                "description": "W3C Trace Context `traceparent` (version-traceid-spanid-flags).",
                "examples": ["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"],
                "pattern": _TRACEPARENT_PATTERN,
                "type": "string",
            },
            "tracestate": {
                "description": "W3C Trace Context `tracestate`, vendor-specific trace data.",
                "type": "string",
            },
        },
        "type": "object",
    }


def _message_id(event_type: str) -> str:
    """Component keys allow letters, digits, `.`, `-`, `_`; the short form reads better."""
    return event_type.removeprefix(TYPE_PREFIX).replace(".", "_")


def _channel_id(topic: str) -> str:
    return topic.replace(".", "_")


def _message(event_cls: type[Event], shared: dict[str, Any]) -> dict[str, Any]:
    data = _payload_schema(event_cls, ref_template="#/components/schemas/{model}")
    for name, definition in data.pop("$defs", {}).items():
        if shared.setdefault(name, definition) != definition:
            raise ValueError(f"two different nested models are both called {name!r}")
    message: dict[str, Any] = {
        "contentType": MESSAGE_CONTENT_TYPE,
        "headers": {"$ref": f"#/components/schemas/{TRACE_HEADERS_SCHEMA}"},
        "name": event_cls.event_type,
        "payload": _envelope_schema(event_cls, data),
        "title": event_cls.__name__,
    }
    summary = _summary(event_cls)
    if summary:
        message["summary"] = summary
    return message


def _channel(topic: TopicSpec) -> dict[str, Any]:
    return {
        "address": topic.name,
        "bindings": {
            "kafka": {
                "bindingVersion": KAFKA_BINDING_VERSION,
                "partitions": topic.partitions,
                "topic": topic.name,
            }
        },
        "description": topic.description,
        "messages": {
            _message_id(t): {"$ref": f"#/components/messages/{_message_id(t)}"}
            for t in topic.events
        },
    }


def _operation(topic: TopicSpec) -> dict[str, Any]:
    channel_id = _channel_id(topic.name)
    return {
        "action": "receive",
        "channel": {"$ref": f"#/channels/{channel_id}"},
        "messages": [
            {"$ref": f"#/channels/{channel_id}/messages/{_message_id(t)}"} for t in topic.events
        ],
        "summary": f"Receive from `{topic.name}`: {topic.description}",
    }


def asyncapi_document() -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document: one channel and one `receive` operation per topic."""
    for topic in ALL_TOPICS:
        unknown = [t for t in topic.events if t not in EVENT_TYPES]
        if unknown:
            raise ValueError(f"topic {topic.name} lists unknown event types {unknown}")
    shared: dict[str, Any] = {TRACE_HEADERS_SCHEMA: _trace_headers_schema()}
    messages = {_message_id(t): _message(cls, shared) for t, cls in EVENT_TYPES.items()}
    return {
        "asyncapi": "3.0.0",
        "channels": {_channel_id(t.name): _channel(t) for t in ALL_TOPICS},
        "components": {"messages": messages, "schemas": shared},
        "defaultContentType": MESSAGE_CONTENT_TYPE,
        "info": {
            "description": _ASYNCAPI_DESCRIPTION,
            "title": "imaging-uploader events",
            "version": metadata.version("contracts"),
        },
        "operations": {f"receive_{_channel_id(t.name)}": _operation(t) for t in ALL_TOPICS},
    }


class _Dumper(yaml.SafeDumper):  # type: ignore[misc, unused-ignore]
    """Never emit anchors/aliases (shared sub-dicts would otherwise become `&id001`)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str_presenter(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str_presenter)


def render_schema(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def render_asyncapi(document: dict[str, Any]) -> str:
    text: str = yaml.dump(
        document,
        Dumper=_Dumper,
        sort_keys=True,
        allow_unicode=True,
        default_flow_style=False,
        width=100,
    )
    return text


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode())
    return path


def write_docs(out_dir: Path) -> list[Path]:
    """Write `schemas/<event type>.json` per event and `asyncapi.yaml` under `out_dir`.

    Schema files of event types that no longer exist are removed: the folder is generated.
    """
    schemas_dir = out_dir / SCHEMAS_DIR
    written = [
        _write(schemas_dir / f"{event_type}.json", render_schema(event_schema(cls)))
        for event_type, cls in sorted(EVENT_TYPES.items())
    ]
    for stale in sorted(set(schemas_dir.glob("*.json")) - set(written)):
        stale.unlink()
    written.append(_write(out_dir / ASYNCAPI_FILE, render_asyncapi(asyncapi_document())))
    return written


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) > 1 or any(a in ("-h", "--help") for a in args):
        print("usage: python -m contracts.docs [OUT_DIR]  (default: docs)", file=sys.stderr)
        return 2
    for path in write_docs(Path(args[0] if args else "docs")):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
