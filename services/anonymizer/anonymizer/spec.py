"""The anonymizer, declared: raw images in, clean images and thumbnails out."""

from __future__ import annotations

from anonymizer.service import NAME, routes
from kit.service import ServiceSpec

__all__ = ["SPEC"]

SPEC = ServiceSpec(
    name=NAME,
    routes=lambda platform: routes(store=platform.store),
    needs=frozenset({"bus", "store", "docs"}),
)
