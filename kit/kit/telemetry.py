"""Tracing and logging set-up for one process; the exporter is chosen by settings."""

from __future__ import annotations

import logging

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

__all__ = ["configure_logging", "configure_tracing"]

_configured = False


def configure_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # aiokafka and the minio SDK are chatty at INFO.
    for noisy in ("aiokafka", "kafka", "urllib3", "faust", "mode"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


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
