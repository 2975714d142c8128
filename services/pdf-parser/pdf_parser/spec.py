"""The pdf-parser, declared: PDF reports in, parsed reports out (PHI to the vault)."""

from __future__ import annotations

from kit.service import ServiceSpec
from pdf_parser.service import NAME, routes

__all__ = ["SPEC"]

SPEC = ServiceSpec(
    name=NAME,
    routes=lambda platform: routes(
        store=platform.store, docs=platform.docs, subject_key=platform.subject_key
    ),
    needs=frozenset({"bus", "store", "docs"}),
)
