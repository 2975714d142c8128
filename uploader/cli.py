"""`uploader`: serve the system, run one service, manage engines, users and tokens."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(help="imaging-uploader: clinical image uploads.", no_args_is_help=True)
users_app = typer.Typer(help="Manage user accounts.", no_args_is_help=True)
tokens_app = typer.Typer(help="Manage API tokens.", no_args_is_help=True)
dlq_app = typer.Typer(help="Dead-letter topics.", no_args_is_help=True)
app.add_typer(users_app, name="users")
app.add_typer(tokens_app, name="tokens")
app.add_typer(dlq_app, name="dlq")

BusOpt = Annotated[str | None, typer.Option("--bus", help="sqlite (embedded) or kafka")]
StoreOpt = Annotated[str | None, typer.Option("--store", help="fs (embedded) or s3")]
DbOpt = Annotated[str | None, typer.Option("--db", help="sqlite (embedded) or mongo")]
HostOpt = Annotated[str | None, typer.Option("--host")]
PortOpt = Annotated[int | None, typer.Option("--port")]
DataOpt = Annotated[Path | None, typer.Option("--data-dir", help="embedded backends' folder")]


def _settings(**overrides: Any) -> Any:
    from gateway.settings import GatewaySettings

    names = {
        "bus": "bus",
        "store": "store",
        "db": "db",
        "host": "http_host",
        "port": "http_port",
        "data_dir": "data_dir",
    }
    given = {names[k]: v for k, v in overrides.items() if v is not None}
    return GatewaySettings(**given)


@app.command()
def serve(
    bus: BusOpt = None,
    store: StoreOpt = None,
    db: DbOpt = None,
    host: HostOpt = None,
    port: PortOpt = None,
    data_dir: DataOpt = None,
) -> None:
    """Run every service in this one process (embedded backends unless told otherwise)."""
    from uploader.bootstrap import serve as serve_all

    settings = _settings(bus=bus, store=store, db=db, host=host, port=port, data_dir=data_dir)
    asyncio.run(serve_all(settings))


@app.command()
def run(
    service: str,
    bus: BusOpt = None,
    store: StoreOpt = None,
    db: DbOpt = None,
    host: HostOpt = None,
    port: PortOpt = None,
    data_dir: DataOpt = None,
) -> None:
    """Run ONE service as its own process (health and metrics on --port)."""
    from uploader.bootstrap import SERVICES, run_one

    if service not in SERVICES:
        raise typer.BadParameter(f"choose one of: {', '.join(SERVICES)}")
    settings = _settings(bus=bus, store=store, db=db, host=host, port=port, data_dir=data_dir)
    asyncio.run(run_one(settings, service))


async def _with_docs(settings: Any, work: Any) -> Any:
    from uploader.bootstrap import open_platform, prepare

    platform = open_platform(settings)
    try:
        await prepare(platform)
        return await work(platform)
    finally:
        await platform.close()


@users_app.command("create")
def users_create(
    name: str,
    role: Annotated[str, typer.Option("--role", help="uploader | data_manager | admin")],
    lab_unit: Annotated[list[str] | None, typer.Option("--lab-unit", help="repeatable")] = None,
    password: Annotated[str | None, typer.Option("--password")] = None,
    quota: Annotated[int | None, typer.Option("--quota", help="lifetime file quota")] = None,
    db: DbOpt = None,
    data_dir: DataOpt = None,
) -> None:
    """Create a user; prints a generated password when none is given."""
    import secrets

    from gateway.accounts import ROLES, Accounts

    if role not in ROLES:
        raise typer.BadParameter(f"role must be one of: {', '.join(ROLES)}")
    secret = password or secrets.token_urlsafe(12)

    async def work(platform: Any) -> None:
        accounts = Accounts(docs=platform.docs)
        await accounts.create_user(
            username=name,
            role=role,
            password=secret,
            lab_unit_ids=tuple(lab_unit or ()),
            upload_quota=quota,
        )

    asyncio.run(_with_docs(_settings(db=db, data_dir=data_dir), work))
    typer.echo(f"created {role} {name!r}" + ("" if password else f" with password: {secret}"))


@tokens_app.command("create")
def tokens_create(
    user: str,
    label: Annotated[str, typer.Option("--label", help="what it is for")] = "",
    expires_days: Annotated[int | None, typer.Option("--expires-days", min=1)] = None,
    db: DbOpt = None,
    data_dir: DataOpt = None,
) -> None:
    """Create an API token for USER and print it (it is shown only this once)."""
    from gateway.accounts import Accounts

    async def work(platform: Any) -> str:
        token, _ = await Accounts(docs=platform.docs).create_token(
            user, label=label, expires_in_days=expires_days
        )
        return token

    typer.echo(asyncio.run(_with_docs(_settings(db=db, data_dir=data_dir), work)))


@tokens_app.command("list")
def tokens_list(user: str, db: DbOpt = None, data_dir: DataOpt = None) -> None:
    """List USER's API tokens: id, label, created, last used, expires (never the token)."""
    from gateway.accounts import Accounts

    async def work(platform: Any) -> list[Any]:
        return await Accounts(docs=platform.docs).tokens(user)

    tokens = asyncio.run(_with_docs(_settings(db=db, data_dir=data_dir), work))
    if not tokens:
        typer.echo(f"{user} has no API tokens")
        return
    typer.echo(f"{'ID':<18} {'LABEL':<24} {'CREATED':<20} {'LAST USED':<20} EXPIRES")
    for token in tokens:
        typer.echo(
            f"{token.token_id:<18} {token.label[:24]:<24} {token.created_at[:19]:<20} "
            f"{(token.last_used_at or 'never')[:19]:<20} "
            f"{(token.expires_at or 'never')[:19]}"
        )


@tokens_app.command("revoke")
def tokens_revoke(token_id: str, db: DbOpt = None, data_dir: DataOpt = None) -> None:
    """Revoke the API token with this ID (from `tokens list`); it stops working at once."""
    from gateway.accounts import Accounts
    from gateway.audit import AuditLog

    async def work(platform: Any) -> bool:
        accounts = Accounts(docs=platform.docs)
        token = await accounts.token(token_id)
        if token is None or not await accounts.revoke_token(token_id):
            return False
        await AuditLog(docs=platform.docs).record(
            "token_revoked", actor="cli", subject=token.username, token_id=token_id
        )
        return True

    if not asyncio.run(_with_docs(_settings(db=db, data_dir=data_dir), work)):
        typer.echo(f"no API token with id {token_id}", err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked {token_id}")


@dlq_app.command("replay")
def dlq_replay(topic: str, bus: BusOpt = None, data_dir: DataOpt = None) -> None:
    """Republish TOPIC's dead letters to TOPIC; services that already handled one skip it."""
    from kit.runtime import replay_dead_letters

    async def work(platform: Any) -> int:
        return await replay_dead_letters(platform.bus, topic=topic)

    count = asyncio.run(_with_docs(_settings(bus=bus, data_dir=data_dir), work))
    typer.echo(f"replayed {count} event(s) to {topic}")


@app.command()
def docs(out: Annotated[Path, typer.Argument(help="folder to write into")] = Path("docs")) -> None:
    """Write the events' JSON Schemas and the AsyncAPI document."""
    from contracts.docs import write_docs

    for path in write_docs(out):
        typer.echo(str(path))


def _mount_engines() -> None:
    try:
        from testkit.cli_engines import engines_app
    except ImportError:  # testkit is a development dependency: not in a production install
        return
    app.add_typer(engines_app, name="engines", help="Real Kafka, MinIO, FerretDB for developers.")


_mount_engines()
