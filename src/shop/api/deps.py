"""The shop's dependencies, each an ``Annotated`` alias, composed into a graph.

Every collaborator a route needs comes through one of these, so a test swaps it with
``app.dependency_overrides`` (``get_gateway``, ``get_settings``, ``current_user``, ...).

    Csrf ─► WebSessionDep                 (a router's or route's ``dependencies=[Csrf]``)
    CurrentUser ─► WebSessionDep
    AdminUser ─► CurrentUser
    Idempotent ─► CurrentUser             (keys are per user)
    Gateway, SettingsDep, LoginThrottleDep ─► the app's state
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from fastapi_atomic import IdempotencyKey, UnitOfWorkDep, claim_idempotency_key
from fastapi_atomic.websession import WebSessionDep, require_csrf_token
from shop.errors import Forbidden, NotAuthenticated
from shop.payments import PaymentGateway
from shop.services.throttle import LoginThrottle
from shop.settings import Settings


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


async def get_gateway(request: Request) -> PaymentGateway:
    gateway: PaymentGateway = request.app.state.gateway
    return gateway


Gateway = Annotated[PaymentGateway, Depends(get_gateway)]


async def get_login_throttle(request: Request) -> LoginThrottle:
    throttle: LoginThrottle = request.app.state.login_throttle
    return throttle


LoginThrottleDep = Annotated[LoginThrottle, Depends(get_login_throttle)]

#: 403 for an unsafe request with a session cookie but a missing or wrong X-CSRF-Token
Csrf = Depends(require_csrf_token)


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


async def current_user(websession: WebSessionDep) -> SessionUser:
    """The logged-in user; 401 for no session, an expired, revoked or tampered one."""
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


async def idempotency_key(request: Request, user: CurrentUser) -> IdempotencyKey | None:
    """The request's Idempotency-Key, claimed for its user (a replay, or a 409 while in use)."""
    return await claim_idempotency_key(request, owner=str(user.id))


Idempotent = Annotated[IdempotencyKey | None, Depends(idempotency_key)]


async def transfer_isolation(settings: SettingsDep, uow: UnitOfWorkDep) -> None:
    """Run a transfer at the configured isolation level (the database's default if unset)."""
    if settings.transfer_isolation is not None:
        await uow.set_isolation_level(settings.transfer_isolation)
