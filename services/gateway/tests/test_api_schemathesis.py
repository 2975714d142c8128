"""Property-based fuzzing of the gateway's REST API from its own OpenAPI schema.

Schemathesis generates requests for every operation of `/openapi.json`, none left out (valid
and invalid ones: its examples, coverage and fuzzing phases), and sends them in-process, through
ASGI, once with an administrator's token and once with an uploader's. Whatever it sends, the
gateway must answer as a program can act on: a 2xx or a clear 4xx, never a 5xx
(`not_a_server_error`; the other checks would flag the 4xx answers the schema does not list).

Bounded and reproducible: at most `MAX_EXAMPLES` fuzzed requests per operation and role (fewer
where the parameters allow fewer), plus the coverage phase's fixed cases, drawn
deterministically (`deterministic`, a fixed seed, no example database), so a failure seen once
is seen on every run. Each operation and role gets a new site (seeded reference data, two users
with a token each), so no test depends on what another one sent.

Generated text is valid UTF-8; what JSON can carry beyond it (lone surrogates) is pinned in
`test_api_errors`.
"""

from __future__ import annotations

import asyncio
import copy
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from argon2 import PasswordHasher
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from gateway import accounts as accounts_module
from gateway.accounts import Accounts
from gateway.app import create_app
from gateway.reference import KINDS, seed_reference_data
from gateway.settings import GatewaySettings
from gateway.uploads import FIELDS
from kit.bus_sqlite import SqliteEventBus
from kit.docs_sqlite import SqliteDocuments
from kit.store_fs import FilesystemObjectStore

MAX_EXAMPLES = 40
SEED = 20_260_101
# Where schemathesis' in-process client sends requests (the app is handed to each call).
BASE_URL = "http://testserver"
ROLES = {"admin": "boss", "uploader": "camp"}
UPLOADER_LAB_UNIT = "city-retina-clinic"
# The upload form's fields are ids of the seeded reference data (what /api/reference lists):
# valid forms get past the form's checks to the files; schemathesis' negative cases send
# anything else.
FORM_IDS = {
    "hospital": ["city-general", "riverside-eye"],
    "lab_unit": [UPLOADER_LAB_UNIT, "riverside-outpatient"],
    "camera": ["remidio-fop"],
    "disease": ["dr"],
    "area": ["left-eye"],
    "mydriatic": ["mydriatic", "non-mydriatic"],
}
assert set(FORM_IDS) == set(FIELDS)
# Path and query parameters the schema can only call strings, and the values that reach past
# "no such ..." on a seeded site. Each is drawn from these as often as from any string.
KNOWN_VALUES = {
    "kind": list(KINDS),
    "item_id": ["city-general", UPLOADER_LAB_UNIT, "remidio-fop", "dr", "left-eye"],
    "username": sorted(ROLES.values()),
}


def _site_settings(data_dir: Path) -> GatewaySettings:
    # Small limits, so a generated upload can reach them.
    return GatewaySettings(
        data_dir=data_dir,
        direct_upload_max_file_size_mb=1,
        direct_upload_max_files=6,
        max_files_per_upload=50,
    )


def _build_app(
    data_dir: Path,
) -> tuple[FastAPI, SqliteDocuments, SqliteEventBus, FilesystemObjectStore]:
    bus = SqliteEventBus(path=data_dir / "events.sqlite3")
    docs = SqliteDocuments(path=data_dir / "documents.sqlite3")
    store = FilesystemObjectStore(root=data_dir / "objects")
    app = create_app(settings=_site_settings(data_dir), bus=bus, store=store, docs=docs)
    return app, docs, bus, store


def _direct_upload_form() -> dict[str, Any]:
    """The direct upload's multipart form. The route reads the request as a stream (files go
    to the object store as they arrive, see `gateway.multipart`), so FastAPI cannot describe
    its body; this is the form as the route's docstring and the upload page define it."""
    properties: dict[str, Any] = {name: {"enum": ids} for name, ids in FORM_IDS.items()}
    properties["files"] = {
        "type": "array",
        "items": {"type": "string", "format": "binary"},
        "minItems": 1,
        "maxItems": 8,
    }
    return {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": properties,
                    "required": [*FIELDS, "files"],
                }
            }
        },
    }


def gateway_openapi() -> dict[str, Any]:
    """What the gateway serves at /openapi.json, with the direct upload's form described
    and the known values of some parameters (`KNOWN_VALUES`) made likelier.

    `app.openapi()` is the document the route serves. Building the app opens nothing (the
    adapters connect on first use), so collecting this module reads and writes no files."""
    with tempfile.TemporaryDirectory() as unused:
        app, *_ = _build_app(Path(unused))
        document = copy.deepcopy(app.openapi())
    for operations in document["paths"].values():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                known = KNOWN_VALUES.get(parameter["name"])
                if known is not None:
                    parameter["schema"] = {"anyOf": [{"enum": known}, parameter["schema"]]}
    upload = document["paths"]["/api/direct/upload"]["post"]
    assert "requestBody" not in upload, "the route now describes its own form: drop this"
    upload["requestBody"] = _direct_upload_form()
    return document


CONFIG = schemathesis.Config.from_dict(
    {
        "seed": SEED,
        "base-url": BASE_URL,
        "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none"},
    }
)
schema = schemathesis.openapi.from_dict(gateway_openapi(), config=CONFIG)


@dataclass(frozen=True)
class Site:
    app: FastAPI
    tokens: dict[str, str]


async def _open_site(
    data_dir: Path,
) -> tuple[Site, SqliteDocuments, SqliteEventBus, FilesystemObjectStore]:
    app, docs, bus, store = _build_app(data_dir)
    await seed_reference_data(docs)
    accounts = Accounts(docs=docs)
    await accounts.create_user(
        username="camp", role="uploader", password="pw-camp-1", lab_unit_ids=(UPLOADER_LAB_UNIT,)
    )
    await accounts.create_user(username="boss", role="admin", password="pw-boss-1")
    tokens = {role: (await accounts.create_token(name))[0] for role, name in ROLES.items()}
    return Site(app=app, tokens=tokens), docs, bus, store


async def _close(docs: SqliteDocuments, bus: SqliteEventBus, store: FilesystemObjectStore) -> None:
    await bus.close()
    await docs.close()
    await store.close()


@pytest.fixture
def fuzzed_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    """A new site per operation and role. Synchronous, because schemathesis' ASGI client
    runs the app on its own event loop thread; the adapters work from any loop."""
    # Passwords are hashed with the cheapest argon2 parameters here: with the real ones (64 MiB,
    # 3 passes) the users made for each site and the ~40 that `POST /api/admin/users` creates
    # took over half of this module's time (about 0.9 s a hash on a busy 2-core machine).
    monkeypatch.setattr(
        accounts_module, "_hasher", PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
    )
    site, docs, bus, store = asyncio.run(_open_site(tmp_path))
    yield site
    asyncio.run(_close(docs, bus, store))


@pytest.fixture(params=sorted(ROLES))
def role(request: pytest.FixtureRequest) -> str:
    role_name: str = request.param
    return role_name


# The site is meant to be shared by the examples of one operation (requests pile up on it as
# they would on a real site), which is what this health check warns about.
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@schema.parametrize()
def test_no_generated_request_gets_a_server_error(
    case: schemathesis.Case[Any], fuzzed_site: Site, role: str
) -> None:
    case.call_and_validate(
        app=fuzzed_site.app,
        headers={"Authorization": f"Bearer {fuzzed_site.tokens[role]}"},
        checks=[not_a_server_error],
    )
