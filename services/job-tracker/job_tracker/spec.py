"""The job-tracker, declared: the single writer of the job status read model."""

from __future__ import annotations

from job_tracker.service import NAME, routes
from kit.service import Platform, ServiceSpec

__all__ = ["SPEC"]


async def _on_kafka(platform: Platform) -> None:
    from job_tracker.faust_app import work  # faust is only imported where it runs

    await work(platform)


SPEC = ServiceSpec(
    name=NAME,
    routes=lambda platform: routes(docs=platform.docs),
    needs=frozenset({"bus", "docs"}),
    kafka_worker=_on_kafka,
)
