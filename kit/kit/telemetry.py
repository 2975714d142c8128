"""Tracing and logging set-up for one process; the exporter is chosen by settings."""

from __future__ import annotations

import logging
import time

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)

from kit.settings import PlatformSettings

__all__ = [
    "OncePerInterval",
    "configure_logging",
    "configure_tracing",
    "quiet_readers_of_patient_files",
]

_configured = False


class OncePerInterval(logging.Filter):
    """Lets the same message (logger and format string) through once per `seconds`, then
    says how many copies it held back: a 20 s Kafka outage made aiokafka log about 7,000
    "Unable connect to node" and "Unable to update metadata" lines across six processes."""

    def __init__(self, *, seconds: float = 30.0, loggers: frozenset[str]) -> None:
        super().__init__()
        self._seconds = seconds
        self._loggers = loggers
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.split(".", 1)[0] not in self._loggers:
            return True
        key = (record.name, str(record.msg))
        now = time.monotonic()
        last, held = self._seen.get(key, (-self._seconds, 0))
        if now - last < self._seconds:
            self._seen[key] = (last, held + 1)
            return False
        if held:
            record.msg = f"{record.msg} (and {held} more like it in {self._seconds:g} s)"
        self._seen[key] = (now, 0)
        return True


# Libraries whose debug output prints what they read: Pillow logs every EXIF tag's value
# (a camera writes the patient's name there), pdfminer the text of every page.
READERS_OF_PATIENT_FILES = ("PIL", "pdfminer", "pdfplumber", "pypdfium2")


def quiet_readers_of_patient_files() -> None:
    """Never log at DEBUG what the libraries reading uploads read (PHI), whatever the level."""
    for name in READERS_OF_PATIENT_FILES:
        logging.getLogger(name).setLevel(logging.INFO)


def configure_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_readers_of_patient_files()
    # aiokafka and the minio SDK are chatty at INFO, and repeat themselves during an outage.
    noisy = frozenset({"aiokafka", "kafka", "urllib3", "faust", "mode"})
    for name in noisy:
        logging.getLogger(name).setLevel(logging.WARNING)
    # On the handlers: a logger's own filters do not see what its children log.
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, OncePerInterval) for f in handler.filters):
            handler.addFilter(OncePerInterval(loggers=noisy))


def configure_tracing(service_name: str, settings: PlatformSettings) -> None:
    """Install a tracer provider once per process; without an exporter spans still carry
    trace ids across services (the context travels in event headers)."""
    global _configured
    if _configured:
        return
    _configured = True
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    exporter: SpanExporter | None = None
    if settings.otel_exporter == "console":
        exporter = ConsoleSpanExporter()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    elif settings.otel_exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=settings.otlp_endpoint.rstrip("/") + "/v1/traces")
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
