"""create_app(settings): wiring only. Nothing connects at import time."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from fastapi_atomic import AtomicMiddleware, create_engine

from .api import api_router
from .api.health import router as health_router
from .errors import ShopError
from .services.accounts import ensure_admin
from .settings import Settings

logger = logging.getLogger("shop")


def build_engine(settings: Settings) -> AsyncEngine:
    if settings.database_url.startswith("sqlite"):
        return create_engine(settings.database_url)
    return create_engine(
        settings.database_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_pool_size,
        pool_pre_ping=True,
        pool_timeout=10,
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    engine = build_engine(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.admin_email and settings.admin_password:
            async with AsyncSession(engine, expire_on_commit=False) as db, db.begin():
                await ensure_admin(
                    db,
                    email=settings.admin_email.lower(),
                    password=settings.admin_password.get_secret_value(),
                )
        try:
            yield
        finally:
            await engine.dispose()

    app = FastAPI(
        title="shop",
        summary="The reference service of fastapi-atomic.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.readiness_checks = {"database": lambda: _ping_database(engine)}

    app.add_middleware(AtomicMiddleware, engine=engine, max_body_size=settings.max_body_size)
    app.include_router(health_router)
    app.include_router(api_router())
    app.add_exception_handler(ShopError, _shop_error)  # type: ignore[arg-type]
    return app


async def _ping_database(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        await connection.execute(text("SELECT 1"))


async def _shop_error(_request: Request, exc: ShopError) -> JSONResponse:
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)
