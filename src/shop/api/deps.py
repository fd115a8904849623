"""The shop's dependencies, each an ``Annotated`` alias, composed into a graph.

Every collaborator a route needs comes through one of these, so a test swaps it with
``app.dependency_overrides`` (``get_gateway``, ``get_settings``, ``current_user``, ...).

    Csrf ─► WebSessionDep                 (a router's or route's ``dependencies=[Csrf]``)
    CurrentUser ─► WebSessionDep, session_cookie
    AdminUser ─► CurrentUser
    Idempotent ─► CurrentUser             (keys are per user)
    Gateway, SettingsDep, LoginThrottleDep ─► the app's state

The cookie, the ``X-CSRF-Token`` and the ``Idempotency-Key`` are declared with FastAPI's own
security and ``Header`` dependencies, so that the OpenAPI document shows which routes take
them. They never refuse a request themselves: the web session and the idempotency keys
decide, in the order and with the statuses the API documents.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request, Security
from fastapi.security import APIKeyCookie

from fastapi_atomic import IdempotencyKey, UnitOfWorkDep, claim_idempotency_key
from fastapi_atomic.websession import WebSession, WebSessionDep, require_csrf_token
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

#: the session cookie's name (``__Host-`` prefixed with ``SHOP_COOKIE_HOST_PREFIX``)
SESSION_COOKIE = "shop_session"

#: the session cookie, as the OpenAPI document's security scheme; the web session reads it
session_cookie = APIKeyCookie(
    name=SESSION_COOKIE,
    scheme_name="session",
    description="The web session, set by logging in (`POST /api/session`).",
    auto_error=False,
)

CsrfTokenHeader = Annotated[
    str | None,
    Header(
        alias="X-CSRF-Token",
        description="The session's `csrf_token`: needed by every unsafe request made with a "
        "session (403 without it).",
    ),
]


async def csrf_token(
    request: Request, websession: WebSessionDep, _token: CsrfTokenHeader = None
) -> None:
    """403, before anything changes, for an unsafe request with a live session but a missing
    or wrong ``X-CSRF-Token`` (the web session checks it)."""
    await require_csrf_token(request, websession)


#: a router's or route's ``dependencies=[Csrf]``
Csrf = Depends(csrf_token)


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


def session_user(websession: WebSession) -> SessionUser | None:
    """Who the web session says is logged in; None for a guest, an expired, revoked or
    tampered session."""
    user = websession.get("user") if websession.is_live else None
    if websession.user_id is None or not isinstance(user, dict):
        return None
    return SessionUser(
        id=int(websession.user_id),
        name=str(user.get("name", "")),
        email=str(user.get("email", "")),
        roles=tuple(user.get("roles", ())),
    )


async def current_user(
    websession: WebSessionDep,
    _cookie: Annotated[str | None, Security(session_cookie)],
) -> SessionUser:
    """The logged-in user; 401 for no session, an expired, revoked or tampered one."""
    user = session_user(websession)
    if user is None:
        raise NotAuthenticated("Not logged in.")
    return user


CurrentUser = Annotated[SessionUser, Depends(current_user)]


async def admin_user(user: CurrentUser) -> SessionUser:
    if not user.is_admin:
        raise Forbidden("Only an administrator may do this.")
    return user


AdminUser = Annotated[SessionUser, Depends(admin_user)]


IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description="Chosen by the client for one operation: a repeat with the same key and "
        "the same request returns the first response again and does nothing more.",
        min_length=1,
        max_length=255,
        # printable ASCII; spaces around a header's value are not part of it
        pattern=r"^[!-~]([ -~]*[!-~])?$",
    ),
]


async def idempotency_key(
    request: Request, user: CurrentUser, _key: IdempotencyKeyHeader = None
) -> IdempotencyKey | None:
    """The request's Idempotency-Key, claimed for its user (a replay, or a 409 while in use).

    A key that is not 1 to 255 printable ASCII characters is a 422 before it is looked at,
    and after the session: ``CurrentUser`` is solved first."""
    return await claim_idempotency_key(request, owner=str(user.id))


Idempotent = Annotated[IdempotencyKey | None, Depends(idempotency_key)]


async def transfer_isolation(settings: SettingsDep, uow: UnitOfWorkDep) -> None:
    """Run a transfer at the configured isolation level (the database's default if unset)."""
    if settings.transfer_isolation is not None:
        await uow.set_isolation_level(settings.transfer_isolation)
