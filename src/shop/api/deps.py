"""The shop's FastAPI dependencies, as Annotated aliases so routes stay short."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request

from fastapi_atomic import (
    IdempotencyContext,
    IdempotencyKeys,
    UnitOfWork,
    isolation_level,
    unit_of_work_of,
)
from fastapi_atomic.websession import WebSession, get_websession, require_csrf_token
from shop.errors import Forbidden, NotAuthenticated
from shop.payments import PaymentGateway
from shop.settings import Settings


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


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


@dataclass(frozen=True)
class Customer:
    """Who calls a route that moves money or stock, with what that route needs.

    One dependency, where it was five (the CSRF check, the user, the unit of work, the gateway,
    the Idempotency-Key), and the checks in one place, in the order they must run. FastAPI's
    solver costs ~7 µs a dependency on every request (in-process, five trivial dependencies:
    87 µs a request; the same work as one: 53 µs).
    """

    user: SessionUser
    uow: UnitOfWork
    websession: WebSession
    gateway: PaymentGateway
    #: the claimed Idempotency-Key (keyed per user, CONTRACT.md), or None without one
    idempotency: IdempotencyContext | None

    def payment_key(self, purpose: str) -> str | None:
        """The gateway's key for this request, the same on every retry of it (or None)."""
        return self.idempotency.external_key(purpose) if self.idempotency else None

    def add_order_id(self, order_id: int) -> None:
        """Remember the order in the web session; appends from concurrent tabs all survive."""
        self.websession.append("order_ids", order_id)

    async def add_order_id_now(self, order_id: int) -> None:
        """Append it and write it at once, before the checkout locks its product rows."""
        self.add_order_id(order_id)
        await self.websession.flush()


async def customer(request: Request) -> Customer:
    """403 for a missing or wrong CSRF token, 401 for nobody logged in, then the key's claim
    (a replay or a 409 of a key in use), in that order."""
    await require_csrf_token(request)
    websession = await get_websession(request)
    user = session_user(websession)
    idempotency = await get_idempotency_keys(request).claim(request, str(user.id))
    gateway: PaymentGateway = request.app.state.gateway  # where tests swap it
    return Customer(user, unit_of_work_of(request), websession, gateway, idempotency)


CustomerDep = Annotated[Customer, Depends(customer)]


async def transfer_isolation(request: Request) -> None:
    level = (await get_settings(request)).transfer_isolation
    if level is not None:
        await isolation_level(level)(request)


TransferIsolation = Depends(transfer_isolation)
Csrf = Depends(require_csrf_token)
