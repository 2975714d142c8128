from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from gateway.accounts import Accounts
from gateway.app import create_app
from gateway.reference import seed_reference_data
from gateway.settings import GatewaySettings
from kit.bus_sqlite import SqliteEventBus
from kit.docs_sqlite import SqliteDocuments
from kit.store_fs import FilesystemObjectStore


@dataclass
class Site:
    client: httpx.AsyncClient
    accounts: Accounts
    docs: SqliteDocuments
    bus: SqliteEventBus
    objects: Path
    tokens: dict[str, str]

    def auth(self, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[user]}"}


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    settings = GatewaySettings(
        data_dir=tmp_path,
        direct_upload_max_file_size_mb=1,
        direct_upload_max_files=6,
        max_files_per_upload=50,
    )
    bus = SqliteEventBus(path=tmp_path / "events.sqlite3")
    docs = SqliteDocuments(path=tmp_path / "documents.sqlite3")
    store = FilesystemObjectStore(root=tmp_path / "objects")
    await seed_reference_data(docs)
    accounts = Accounts(docs=docs)
    await accounts.create_user(
        username="camp", role="uploader", password="pw-camp-1", lab_unit_ids=("city-retina-clinic",)
    )
    await accounts.create_user(
        username="small",
        role="uploader",
        password="pw-small-1",
        lab_unit_ids=("city-retina-clinic",),
        upload_quota=2,
    )
    await accounts.create_user(username="boss", role="admin", password="pw-boss-1")
    tokens = {u: (await accounts.create_token(u))[0] for u in ("camp", "small", "boss")}
    app = create_app(settings=settings, bus=bus, store=store, docs=docs)
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 5555))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        yield Site(
            client=client,
            accounts=accounts,
            docs=docs,
            bus=bus,
            objects=tmp_path / "objects",
            tokens=tokens,
        )
    await bus.close()
    await docs.close()
    await store.close()
