"""Ingest, declared: catalogue records, the grading queue, parsed reports."""

from __future__ import annotations

from ingest.read_model import INDEXES
from ingest.service import NAME, routes
from kit.service import ServiceSpec

__all__ = ["SPEC"]

SPEC = ServiceSpec(
    name=NAME,
    routes=lambda platform: routes(docs=platform.docs),
    needs=frozenset({"bus", "docs"}),
    indexes=INDEXES,
)
