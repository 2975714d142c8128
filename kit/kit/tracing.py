"""W3C trace context carried in event headers.

Only the bus adapters call these: handlers never see OpenTelemetry. `inject` on publish adds
`traceparent`/`tracestate` (and `baggage`, if any) from the current context to the caller's
headers; the consumer side hands the headers over as they were on the wire, and the service
runtime calls `extract` to continue the trace.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from opentelemetry import propagate, trace
from opentelemetry.context import Context

__all__ = [
    "extract",
    "inject",
    "span",
]


def inject(headers: Mapping[str, str]) -> dict[str, str]:
    """The caller's headers plus the trace context of the current span, if there is one.

    With no valid current span nothing is added, so a caller's own `traceparent` (e.g. an event
    replayed from the dead-letter topic) passes through unchanged.
    """
    carrier = dict(headers)
    propagate.inject(carrier)
    return carrier


def extract(headers: Mapping[str, str]) -> Context:
    """The context to start a consumer span in: the publisher's span as the remote parent."""
    return propagate.extract(dict(headers))


@contextmanager
def span(name: str, **attributes: str) -> Iterator[None]:
    """A span around work that starts a trace of its own, e.g. the gateway receiving one file:
    everything published inside carries it, so the file's trace crosses every service."""
    tracer = trace.get_tracer("imaging-uploader")
    with tracer.start_as_current_span(name, kind=trace.SpanKind.PRODUCER, attributes=attributes):
        yield
