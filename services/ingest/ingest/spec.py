"""Ingest, declared: catalogue records, the grading queue, parsed reports."""

from __future__ import annotations

from ingest.read_model import CATALOGUE, INDEXES
from ingest.service import NAME, routes
from ingest.uploads_query import INDEXES as QUERY_INDEXES
from kit.service import ServiceSpec

__all__ = ["SPEC"]

SPEC = ServiceSpec(
    name=NAME,
    routes=lambda platform: routes(docs=platform.docs),
    needs=frozenset({"bus", "docs"}),
    # The dashboard's filters (uploads_query) beside the read model's own.
    indexes={
        **INDEXES,
        CATALOGUE: (*INDEXES[CATALOGUE], *QUERY_INDEXES[CATALOGUE]),
    },
)
