"""The `shop` command: serve, db, seed, sessions, payments, fake-gateway."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

import typer
from pydantic import ValidationError

from .settings import Settings

app = typer.Typer(help="The shop: a reference service for fastapi-atomic.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        for error in exc.errors():
            typer.echo(f"shop: configuration error: {error['msg']}", err=True)
        raise typer.Exit(2) from exc


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
) -> None:
    """Bring the database schema up to date, then serve the storefront and the API."""
    import uvicorn

    from .db.migrate import upgrade_sync

    settings = _settings()
    settings.signing_keys()  # fail or create the development key before workers fork
    upgrade_sync(settings.database_url)
    uvicorn.run(
        "shop.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="info",
        proxy_headers=False,
    )


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply pending migrations (Alembic), nothing else."""
    from .db.migrate import upgrade_sync

    upgrade_sync(_settings().database_url)
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
    upgrade_sync(settings.database_url)
    created = asyncio.run(seed_demo(settings.database_url))
    typer.echo("\n".join(f"created {what}" for what in created) or "demo data already present")


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
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    app(prog_name="shop")


if __name__ == "__main__":  # pragma: no cover
    main()
