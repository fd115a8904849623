"""The `shop` command: serve, db, seed, sessions, payments, fake-gateway."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import tempfile
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from pydantic import ValidationError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from .settings import Settings, trusted_proxy

if TYPE_CHECKING:
    from fastapi import FastAPI

#: where prometheus_client's multiprocess mode keeps each process's values
MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"

app = typer.Typer(help="The shop: a reference service for fastapi-atomic.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")
sessions_app = typer.Typer(help="Web sessions.", no_args_is_help=True)
app.add_typer(sessions_app, name="sessions")
payments_app = typer.Typer(help="Card payments.", no_args_is_help=True)
app.add_typer(payments_app, name="payments")


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        for error in exc.errors():
            variable = "".join(f"SHOP_{str(part).upper()}" for part in error["loc"][:1])
            where = f"{variable}: " if variable else ""
            typer.echo(f"shop: configuration error: {where}{error['msg']}", err=True)
        raise typer.Exit(2) from exc


@contextlib.contextmanager
def _database(url: str) -> Iterator[None]:
    """A database that does not answer is one line that names it, not a traceback."""
    parsed = make_url(url)
    shown = parsed.render_as_string(hide_password=True)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        folder = Path(parsed.database).parent
        if not folder.is_dir():  # checked first: the driver fails noisily in its own thread
            typer.echo(
                f"shop: the database at {shown} cannot be opened: no folder {folder}", err=True
            )
            raise typer.Exit(1)
    try:
        yield
    except (OSError, DBAPIError) as exc:
        reason = exc.orig if isinstance(exc, DBAPIError) else exc
        typer.echo(f"shop: the database at {shown} did not answer: {reason}", err=True)
        raise typer.Exit(1) from exc


def _version(value: bool) -> None:
    if value:
        typer.echo(f"shop {version('fastapi-atomic')}")
        raise typer.Exit()


@app.callback()
def _options(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Log what happens (migrations, pools).")
    ] = False,
) -> None:
    """The shop: a reference service for fastapi-atomic."""
    logging.getLogger().setLevel(logging.INFO if verbose else logging.WARNING)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
    forwarded_allow_ips: Annotated[
        str | None,
        typer.Option(
            help="Proxies to believe about the client (X-Forwarded-For, X-Forwarded-Proto): "
            "addresses and CIDR networks, comma-separated. Overrides SHOP_FORWARDED_ALLOW_IPS; "
            "unset there too, no proxy is believed.",
        ),
    ] = None,
    worker_start_timeout: Annotated[
        int,
        typer.Option(
            min=1,
            help="With several workers: seconds a worker may take to start (to import the "
            "app and answer its supervisor) before it is restarted.",
        ),
    ] = 60,
) -> None:
    """Bring the database schema up to date, then serve the storefront and the API."""
    import uvicorn

    from .db.migrate import upgrade_sync
    from .request_ids import log_config

    settings = _settings()
    proxies = settings.forwarded_allow_ips
    if forwarded_allow_ips is not None:
        try:
            items = [item.strip() for item in forwarded_allow_ips.split(",")]
            proxies = [trusted_proxy(item) for item in items if item]  # "" believes none
        except ValueError as exc:
            typer.echo(f"shop: --forwarded-allow-ips: {exc}", err=True)
            raise typer.Exit(2) from exc
    if workers > 1 and settings.session_store == "memory":
        typer.echo(
            "shop: SHOP_SESSION_STORE=memory keeps web sessions in one process; with "
            f"--workers {workers} a session would be known to one worker only. Use "
            "SHOP_SESSION_STORE=sql (the default) or redis.",
            err=True,
        )
        raise typer.Exit(2)
    settings.signing_keys()  # fail or create the development key before workers fork
    with _database(settings.direct_database_url):
        upgrade_sync(settings.direct_database_url)
        if settings.admin_email and settings.admin_password:
            # Once, here, before the workers start: each then finds the administrator there,
            # where several creating it at once on SQLite raced for its single write lock.
            asyncio.run(_ensure_admin(settings))
    with _metrics_directory(workers):
        uvicorn.run(
            "shop.cli:serving_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level="info",
            log_config=log_config(
                root_level=logging.getLevelName(logging.getLogger().level),
                log_format=settings.log_format,
            ),
            access_log=False,  # the shop writes its own access line (shop.logs)
            # The client address (the log-in throttle's key, the access log's) comes from
            # X-Forwarded-For only when the peer is one of these proxies; without any, uvicorn's
            # middleware is left out, and its default (trust 127.0.0.1) never applies.
            proxy_headers=bool(proxies),
            forwarded_allow_ips=proxies or None,
            # uvicorn's default, 5 s, restarts a worker still importing the app on a busy
            # host, again and again: each restart starts the import over
            timeout_worker_healthcheck=worker_start_timeout,
        )


@contextlib.contextmanager
def _metrics_directory(workers: int) -> Iterator[None]:
    """With several workers, each keeps its Prometheus values in files of a directory they
    share, and a scrape of any one of them sums them all (prometheus_client's multiprocess
    mode): a fresh temporary directory, removed at exit, unless PROMETHEUS_MULTIPROC_DIR names
    one already (the operator's, to empty before each start). Set before the workers start:
    each reads it when it first imports prometheus_client."""
    if workers == 1 or os.environ.get(MULTIPROC_DIR):
        yield
        return
    with tempfile.TemporaryDirectory(prefix="shop-metrics-") as directory:
        os.environ[MULTIPROC_DIR] = directory
        try:
            yield
        finally:
            del os.environ[MULTIPROC_DIR]


async def _ensure_admin(settings: Settings) -> None:
    from .app import build_engine, ensure_admin_exists

    engine = build_engine(settings)
    try:
        await ensure_admin_exists(engine, settings)
    finally:
        await engine.dispose()


def serving_app() -> FastAPI:
    """The app as `shop serve` runs it (in each worker): built, then frozen out of the GC.

    A full garbage collection walks every tracked object, and once the app is built most of
    them are what start-up made to keep for good (modules, routes, models, tables): each such
    collection under load stalled the event loop, every request in flight waiting. Frozen
    objects are never collected again, so this runs once, after a collection.
    """
    from .app import create_app

    application = create_app()
    gc.collect()
    gc.freeze()
    return application


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply pending migrations (Alembic), nothing else."""
    from .db.migrate import upgrade_sync

    url = _settings().direct_database_url
    with _database(url):
        upgrade_sync(url)
    typer.echo("database schema is up to date")


@app.command()
def seed(demo: Annotated[bool, typer.Option("--demo", help="Demo data.")] = False) -> None:
    """Load a demo catalogue and a demo customer (idempotent)."""
    from .db.migrate import upgrade_sync
    from .seed import seed_demo

    if not demo:
        typer.echo("nothing to do: pass --demo", err=True)
        raise typer.Exit(2)
    settings = _settings()
    with _database(settings.direct_database_url):
        upgrade_sync(settings.direct_database_url)
        created = asyncio.run(seed_demo(settings.direct_database_url))
    typer.echo("\n".join(f"created {what}" for what in created) or "demo data already present")


@sessions_app.command("purge")
def sessions_purge() -> None:
    """Delete expired web sessions and print how many."""
    from fastapi_atomic import atomic

    from .app import build_engine, build_session_manager, build_session_store

    settings = _settings()

    async def purge() -> int:
        store = build_session_store(settings)
        build_session_manager(settings, store)  # tells the store its timeouts
        engine = build_engine(settings)
        try:
            async with atomic(engine) as uow:
                return await store.purge_expired(uow)
        finally:
            await store.aclose()
            await engine.dispose()

    with _database(settings.database_url):
        purged = asyncio.run(purge())
    typer.echo(f"{purged} expired web sessions deleted")


@payments_app.command("reconcile")
def payments_reconcile(
    min_age: Annotated[
        int | None, typer.Option(help="Only payments pending this many seconds or more.")
    ] = None,
) -> None:
    """Settle orders and deposits left pending by a crash or a gateway time-out."""
    from .app import build_engine
    from .payments import HttpGateway
    from .reconcile import ReconcileReport, reconcile

    settings = _settings()
    if settings.payment_gateway == "fake":
        typer.echo(
            "shop: SHOP_PAYMENT_GATEWAY=fake is the simulator inside the server process, which "
            "this command cannot ask. Set SHOP_PAYMENT_GATEWAY to the base URL of the card "
            "gateway the server uses (for the simulator as a process: `shop fake-gateway "
            "--port 9000`, then SHOP_PAYMENT_GATEWAY=http://127.0.0.1:9000 for both commands).",
            err=True,
        )
        raise typer.Exit(2)

    async def run() -> ReconcileReport:
        engine = build_engine(settings)
        gateway = HttpGateway(settings.payment_gateway, timeout=settings.payment_gateway_timeout)
        try:
            age = settings.reconcile_min_age if min_age is None else min_age
            report = await reconcile(engine, gateway, min_age_seconds=age)
        finally:
            await gateway.aclose()
            await engine.dispose()
        typer.echo(f"settled: {len(report.settled)} {' '.join(report.settled)}".rstrip())
        typer.echo(f"released: {len(report.released)} {' '.join(report.released)}".rstrip())
        typer.echo(
            f"still pending: {len(report.still_pending)} {' '.join(report.still_pending)}".rstrip()
        )
        return report

    with _database(settings.database_url):
        report = asyncio.run(run())
    if report.still_pending:
        typer.echo(
            "shop: the gateway did not answer for every pending payment; run this again later.",
            err=True,
        )
        raise typer.Exit(1)


admin_app = typer.Typer(help="Administrators.", no_args_is_help=True)
app.add_typer(admin_app, name="admin")


@admin_app.command("create")
def admin_create(
    email: Annotated[str, typer.Option(help="The administrator's e-mail, to log in with.")],
    password: Annotated[
        str,
        typer.Option(
            prompt=True, hide_input=True, confirmation_prompt=True, help="Asked if not given."
        ),
    ],
) -> None:
    """Create an administrator (or make an existing user one, with this password)."""
    from pydantic import TypeAdapter

    from fastapi_atomic import atomic

    from .app import build_engine
    from .fields import Email, Password
    from .services.accounts import ensure_admin

    try:
        email = TypeAdapter(Email).validate_python(email)
        password = TypeAdapter(Password).validate_python(password)
    except ValidationError as exc:
        typer.echo(f"shop: {exc.errors()[0]['msg']}", err=True)
        raise typer.Exit(2) from exc
    settings = _settings()

    async def create() -> None:
        engine = build_engine(settings)
        try:
            async with atomic(engine) as uow:
                await ensure_admin(uow.db, email=email, password=password)
        finally:
            await engine.dispose()

    with _database(settings.direct_database_url):
        from .db.migrate import upgrade_sync

        upgrade_sync(settings.direct_database_url)
        asyncio.run(create())
    typer.echo(f"administrator {email} is ready")


@app.command("fake-gateway")
def fake_gateway(
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 9000,
    latency_ms: Annotated[int | None, typer.Option(help="Defaults to the setting.")] = None,
) -> None:
    """Run the card-gateway simulator as its own HTTP service."""
    from .payments.fake import serve as serve_gateway

    latency = latency_ms if latency_ms is not None else _settings().fake_gateway_latency_ms
    serve_gateway(host, port, latency)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app(prog_name="shop")


if __name__ == "__main__":  # pragma: no cover
    main()
