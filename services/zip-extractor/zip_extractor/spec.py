"""The zip-extractor, declared: archives in, one event per entry out."""

from __future__ import annotations

from collections.abc import Mapping

from kit.phi import INDEXES as PHI_INDEXES
from kit.runtime import Route
from kit.service import Platform, ServiceSpec
from zip_extractor.read_model import INDEXES
from zip_extractor.service import NAME, limits_from_settings, routes

__all__ = ["SPEC"]


def _routes(platform: Platform) -> Mapping[str, Route]:
    return routes(
        store=platform.store,
        docs=platform.docs,
        scanner=platform.scanner,
        subject_key=platform.subject_key,
        limits=limits_from_settings(platform.settings),
    )


SPEC = ServiceSpec(
    name=NAME,
    routes=_routes,
    needs=frozenset({"bus", "store", "docs"}),
    indexes={**INDEXES, **PHI_INDEXES},
)
