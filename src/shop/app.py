"""create_app(settings): wiring only. Nothing connects at import time."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import iter_route_contexts
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.exceptions import HTTPException
from starlette.routing import compile_path

from fastapi_atomic import AtomicMiddleware, IdempotencyKeys, PoolMetrics, atomic, create_engine
from fastapi_atomic.engine import writer_engine
from fastapi_atomic.websession import (
    MemoryStore,
    RedisStore,
    SqlStore,
    WebSessionManager,
    WebSessionStore,
)

from . import api
from .api.deps import SESSION_COOKIE
from .api.health import router as health_router
from .api.responses import TOO_LARGE, UNAVAILABLE
from .db.models import idempotency_keys, web_sessions
from .errors import Conflict, ShopError
from .logs import AccessLogMiddleware
from .payments import MeteredGateway, build_gateway
from .request_ids import HEADER as REQUEST_ID_HEADER
from .request_ids import RequestIdMiddleware, request_id
from .services.accounts import ensure_admin
from .services.throttle import LoginLimits, LoginThrottle
from .settings import Settings
from .web import error_response, http_error_response, login_required, static_files, wants_page
from .web import router as web_router
from .web.pages import LoginRequired

logger = logging.getLogger("shop")


def build_engine(settings: Settings) -> AsyncEngine:
    return create_engine(
        settings.database_url,
        pool_size=settings.db_pool_size,
        transaction_pooling=settings.db_transaction_pooling,
    )


def watch_pools(engine: AsyncEngine) -> None:
    """Gauges of the engine's pool, and of its writers' on a SQLite file (``atomic_pool_*``)."""
    metrics = PoolMetrics.default()
    metrics.watch(engine, "default")
    writer = writer_engine(engine)
    if writer is not engine:
        metrics.watch(writer, "writer")


def build_session_store(settings: Settings) -> WebSessionStore:
    if settings.session_store == "redis":
        prefix = f"{settings.redis_prefix}websession:"
        if settings.redis_sentinels:
            return RedisStore.from_sentinels(
                settings.redis_sentinel_addresses(),
                settings.redis_sentinel_service,
                url=settings.redis_url,
                prefix=prefix,
                cache=settings.session_cache,
            )
        return RedisStore.from_url(settings.redis_url, prefix=prefix, cache=settings.session_cache)
    if settings.session_store == "memory":
        return MemoryStore()
    return SqlStore(
        web_sessions, cache=settings.session_cache, listen_url=settings.database_direct_url
    )


def build_session_manager(settings: Settings, store: WebSessionStore) -> WebSessionManager:
    return WebSessionManager(
        store,
        settings.signing_keys(),
        cookie_name=SESSION_COOKIE,
        idle_timeout=settings.session_idle_timeout,
        absolute_timeout=settings.session_absolute_timeout,
        secure=settings.cookie_secure,
        host_prefix=settings.cookie_host_prefix,
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    engine = build_engine(settings)
    store = build_session_store(settings)
    watch_pools(engine)
    gateway = MeteredGateway(
        build_gateway(
            settings.payment_gateway,
            fake_latency_ms=settings.fake_gateway_latency_ms,
            timeout=settings.payment_gateway_timeout,
        )
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.admin_email and settings.admin_password:
            await ensure_admin_exists(engine, settings)
        try:
            yield
        finally:
            await gateway.aclose()
            await engine.dispose()

    app = FastAPI(
        title="shop",
        summary="The reference service of fastapi-atomic.",
        version="0.1.0",
        lifespan=lifespan,
        max_body_size=settings.max_body_size,
        responses=TOO_LARGE,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.gateway = gateway
    app.state.login_throttle = LoginThrottle(
        engine,
        LoginLimits(
            per_email_and_address=settings.login_max_failures_per_email_and_address,
            per_email=settings.login_max_failures_per_email,
            per_address=settings.login_max_failures_per_address,
            window=settings.login_failure_window,
        ),
    )
    app.state.readiness_checks = {"database": lambda: _ping_database(engine)}
    if settings.session_store == "redis":
        app.state.readiness_checks["session store (redis)"] = store.ping

    websessions = build_session_manager(settings, store)
    app.add_middleware(
        AtomicMiddleware,
        engine=engine,
        websessions=websessions,
        idempotency_keys=IdempotencyKeys(idempotency_keys),
        unavailable_response=_unavailable_page,
    )
    # Between the two: it reads what the unit of work did, and its line carries the id.
    app.add_middleware(AccessLogMiddleware)
    app.add_middleware(RequestIdMiddleware)  # outermost: every response carries the id
    for router in api.routers:
        # Every API route runs in the unit of work, whose database can be unavailable.
        app.include_router(router, prefix="/api", responses=UNAVAILABLE)
    app.include_router(health_router)
    app.include_router(web_router)
    app.mount("/static", static_files(), name="static")
    app.add_exception_handler(LoginRequired, login_required)  # type: ignore[arg-type]
    app.add_exception_handler(ShopError, _shop_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _invalid_request)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _internal_error)
    if websessions.cookie_name != SESSION_COOKIE:
        _name_session_cookie(app, websessions.cookie_name)
    return app


def _name_session_cookie(app: FastAPI, name: str) -> None:
    """The OpenAPI document names the cookie this app uses (``__Host-shop_session``): the
    routes, and the security scheme they declare, are shared by every app."""
    build_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        document = build_openapi()
        document["components"]["securitySchemes"]["session"]["name"] = name
        return document

    app.openapi = openapi  # type: ignore[method-assign]


async def ensure_admin_exists(engine: AsyncEngine, settings: Settings) -> None:
    """The administrator named by the settings exists, with their password."""
    assert settings.admin_email and settings.admin_password
    for attempt in (1, 2):
        try:
            async with atomic(engine) as uow:
                await ensure_admin(
                    uow.db,
                    email=settings.admin_email,
                    password=settings.admin_password.get_secret_value(),
                )
            return
        except Conflict:
            # Another worker created the admin at the same moment: look again, now it exists.
            if attempt == 2:
                raise


async def _ping_database(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        await connection.execute(text("SELECT 1"))


def _unavailable_page(request: Request, detail: str) -> Response | None:
    """A browser's page gets the outage as a page; the API, its JSON."""
    return error_response(request, 503, detail) if wants_page(request) else None


async def _shop_error(request: Request, exc: ShopError) -> Response:
    if wants_page(request):
        return error_response(request, exc.status_code, exc.detail)
    headers = {"Retry-After": "1"} if exc.status_code == 503 else {}
    return JSONResponse(
        {"detail": exc.detail}, status_code=exc.status_code, headers=headers | exc.headers
    )


async def _internal_error(request: Request, _exc: Exception) -> Response:
    """A bug (the server logs it with its traceback): JSON like every other error, naming the
    request id to look for in the log, and ``Connection: close``, because the server closes
    the connection after an unhandled exception and a client reusing it would fail."""
    rid = request_id.get()
    detail = f"Internal error; it was logged under request id {rid}."
    # Sent by the outermost middleware, past the request-id one: the id is set here.
    headers = {"Connection": "close", REQUEST_ID_HEADER: rid}
    if wants_page(request):
        response = error_response(request, 500, f"It was logged under request id {rid}.")
        response.headers.update(headers)
        return response
    return JSONResponse({"detail": detail}, status_code=500, headers=headers)


async def _invalid_request(request: Request, exc: RequestValidationError) -> Response:
    """FastAPI's 422, without echoing an input that JSON cannot carry (a number too large
    for a float, a lone surrogate): the answer to bad input must never fail itself. A page
    whose address does not parse (``/products/abc``) is a page that does not exist."""
    if wants_page(request):
        if request.method == "GET":
            return error_response(request, 404, "There is no such page.")
        return error_response(request, 422, "Some of its fields are not valid.")
    errors = []
    for error in jsonable_encoder(exc.errors()):
        try:
            json.dumps(error, allow_nan=False, ensure_ascii=False).encode()
        except (ValueError, UnicodeEncodeError):
            error = {key: value for key, value in error.items() if key not in ("input", "ctx")}
        errors.append(error)
    return JSONResponse({"detail": errors}, status_code=422)


#: what FastAPI's JSON parsing raises, beyond a JSONDecodeError, for a body it cannot read
#: (in this order: a UnicodeDecodeError is a ValueError too)
_UNREADABLE_JSON: dict[type[Exception], str] = {
    UnicodeDecodeError: "The body is not UTF-8 text.",
    RecursionError: "The JSON is nested too deeply.",
    ValueError: "The JSON could not be read.",  # an integer with too many digits
}


async def _http_error(request: Request, exc: HTTPException) -> Response:
    """FastAPI's answer to an HTTPException, but for two that FastAPI and Starlette raise.

    - A JSON body FastAPI could not parse other than by a JSONDecodeError (not UTF-8, nested
      deeper than the parser goes, an integer with more digits than Python converts) is its
      400 "There was an error parsing the body": a 422 like any other malformed body.
    - A 405's ``Allow`` names the methods of the first route whose path matched: it lists
      those of every route of the path instead.
    """
    cause = exc.__cause__
    if exc.status_code == 400 and cause is not None:
        for kind, message in _UNREADABLE_JSON.items():
            if isinstance(cause, kind):
                return await _invalid_request(
                    request,
                    RequestValidationError(
                        [
                            {
                                "type": "json_invalid",
                                "loc": ("body",),
                                "msg": message,
                                "ctx": {"error": str(cause)},
                            }
                        ]
                    ),
                )
    if exc.status_code == 405:
        allowed = _methods_of(request)
        if allowed:
            exc.headers = {**(exc.headers or {}), "Allow": ", ".join(sorted(allowed))}
    if wants_page(request):
        response = http_error_response(request, exc.status_code, str(exc.detail))
        response.headers.update(exc.headers or {})
        return response
    return await http_exception_handler(request, exc)


def _methods_of(request: Request) -> set[str]:
    """The methods of every route whose path is the request's."""
    methods: set[str] = set()
    for route in iter_route_contexts(request.app.routes):
        path, route_methods = route.path, route.methods
        if path and route_methods and compile_path(path)[0].match(request.url.path):
            methods |= route_methods
    return methods
