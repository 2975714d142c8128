"""The platform's periodic work: the event log's retention and the ledger's."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from contracts.events import Ingested
from contracts.topics import INGESTED
from gateway.settings import GatewaySettings
from kit.runtime import LEDGER_COLLECTION, Emit, publish_events
from uploader.bootstrap import SPECS, maintain, open_platform, prepare


async def test_maintenance_prunes_the_event_log_and_forgets_old_ledger_entries(
    tmp_path: Path,
) -> None:
    settings = GatewaySettings(
        data_dir=tmp_path, event_retention_hours=0.0001, ledger_retention_hours=1
    )
    platform = open_platform(settings)
    try:
        await prepare(platform, SPECS)
        event = Ingested(job_id="j", item_id="i", record_id="i", kind="image")
        await publish_events(platform.bus, [Emit(INGESTED, event)] * 3, source="test")
        consumer = platform.bus.consumer(group="reader", topics=[INGESTED])
        deliveries = await consumer.fetch(timeout=2)
        await consumer.commit(deliveries[-1])
        await consumer.close()
        ledger = platform.docs.collection(LEDGER_COLLECTION)
        await ledger.put({"_id": "svc:old", "at": time.time() - 7200})
        await ledger.put({"_id": "svc:new", "at": time.time()})
        await asyncio.sleep(0.5)  # older than the (tiny) retention
        await maintain(platform, SPECS)
        assert [d["_id"] for d in await ledger.find()] == ["svc:new"]
        again = platform.bus.consumer(group="late", topics=[INGESTED])
        assert await again.fetch(timeout=0.5) == []  # read by every group, then pruned
        await again.close()
    finally:
        await platform.close()
