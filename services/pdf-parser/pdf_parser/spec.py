"""The pdf-parser, declared: PDF reports in, parsed findings out."""

from __future__ import annotations

from kit.service import ServiceSpec
from pdf_parser.service import NAME, routes

__all__ = ["SPEC"]

SPEC = ServiceSpec(
    name=NAME,
    routes=lambda platform: routes(store=platform.store),
    needs=frozenset({"bus", "store", "docs"}),
)
