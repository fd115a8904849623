"""The shop's FastAPI dependencies, as Annotated aliases so routes stay short."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request

from fastapi_atomic import IdempotencyContext, IdempotencyKeys, isolation_level
from fastapi_atomic.websession import (
    WebSession,
    WebSessionDep,
    get_websession,
    require_csrf_token,
)
from shop.errors import Forbidden, NotAuthenticated
from shop.payments import PaymentGateway
from shop.settings import Settings


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_gateway(request: Request) -> PaymentGateway:
    gateway: PaymentGateway = request.app.state.gateway
    return gateway


SettingsDep = Annotated[Settings, Depends(get_settings)]
Gateway = Annotated[PaymentGateway, Depends(get_gateway)]


@dataclass(frozen=True)
class SessionUser:
    """Who is logged in, as the web session remembers it."""

    id: int
    name: str
    email: str
    roles: tuple[str, ...]

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "email": self.email, "roles": list(self.roles)}


async def current_user(request: Request) -> SessionUser:
    """The logged-in user; 401 for no session, an expired, revoked or tampered one."""
    # get_websession called here rather than declared as a sub-dependency: FastAPI's solver
    # costs ~20 µs a level, and this runs on every authenticated request. It is idempotent,
    # so a route that also declares WebSessionDep gets the same WebSession.
    return session_user(await get_websession(request))


def session_user(websession: WebSession) -> SessionUser:
    """Who the loaded ``websession`` belongs to; NotAuthenticated (401) for nobody."""
    user = websession.get("user") if websession.is_live else None
    if websession.user_id is None or not isinstance(user, dict):
        raise NotAuthenticated("Not logged in.")
    return SessionUser(
        id=int(websession.user_id),
        name=str(user.get("name", "")),
        email=str(user.get("email", "")),
        roles=tuple(user.get("roles", ())),
    )


CurrentUser = Annotated[SessionUser, Depends(current_user)]


async def admin_user(user: CurrentUser) -> SessionUser:
    if not user.is_admin:
        raise Forbidden("Only an administrator may do this.")
    return user


AdminUser = Annotated[SessionUser, Depends(admin_user)]


def get_idempotency_keys(request: Request) -> IdempotencyKeys:
    keys: IdempotencyKeys = request.app.state.idempotency_keys
    return keys


async def claim_idempotency_key(request: Request, user: CurrentUser) -> IdempotencyContext | None:
    """Idempotency-Key handling, keyed per user (CONTRACT.md)."""
    claim = get_idempotency_keys(request).dependency(lambda: str(user.id))
    return await claim(request, str(user.id))


Idempotent = Annotated[IdempotencyContext | None, Depends(claim_idempotency_key)]


class SessionOrderIds:
    """The order ids kept in the web session; appends from concurrent tabs all survive."""

    def __init__(self, websession: WebSession) -> None:
        self._websession = websession

    def append(self, order_id: int) -> None:
        self._websession.append("order_ids", order_id)

    async def append_now(self, order_id: int) -> None:
        """Append and write it at once, before the checkout locks its product rows."""
        self.append(order_id)
        await self._websession.flush()


async def session_order_ids(websession: WebSessionDep) -> SessionOrderIds:
    return SessionOrderIds(websession)


SessionOrders = Annotated[SessionOrderIds, Depends(session_order_ids)]


async def transfer_isolation(request: Request) -> None:
    level = (await get_settings(request)).transfer_isolation
    if level is not None:
        await isolation_level(level)(request)


TransferIsolation = Depends(transfer_isolation)
Csrf = Depends(require_csrf_token)
