"""The zip-extractor, declared: archives in, one event per entry out."""

from __future__ import annotations

from kit.service import ServiceSpec
from zip_extractor.service import NAME, routes

__all__ = ["SPEC"]

SPEC = ServiceSpec(
    name=NAME,
    routes=lambda platform: routes(store=platform.store),
    needs=frozenset({"bus", "store", "docs"}),
)
