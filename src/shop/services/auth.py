"""Logging in: who the credentials name, under the log-in throttle, and what the web session
remembers of them. The JSON API and the storefront's pages both log in through here."""

from __future__ import annotations

from fastapi_atomic import UnitOfWork
from fastapi_atomic.websession import WebSession
from shop.db.models import User
from shop.errors import NotAuthenticated

from .accounts import find_user_by_email
from .passwords import verify_password
from .throttle import LoginThrottle


async def authenticate(
    uow: UnitOfWork, throttle: LoginThrottle, *, email: str, password: str, address: str
) -> User:
    """The user these credentials name. A failure counts against the e-mail and the address
    (written once the request's transaction ends: see services/throttle.py), and the same
    answer is given for an unknown e-mail as for a wrong password."""
    await throttle.check(uow.db, email, address)
    user = await find_user_by_email(uow.db, email)
    if not await verify_password(user.password_hash if user else None, password) or not user:
        throttle.count_failure(uow, email, address)
        raise NotAuthenticated("Wrong e-mail or password.")
    await throttle.succeeded(uow.db, email, address)
    return user


def roles_of(user: User) -> tuple[str, ...]:
    return ("admin", "customer") if user.role == "admin" else ("customer",)


def log_in(websession: WebSession, user: User) -> None:
    """Bind the web session to ``user`` (a new id; a guest's cart is kept, another user's
    session is not), with what pages show of them without a query."""
    websession.login(
        str(user.id),
        {"user": {"name": user.name, "email": user.email, "roles": list(roles_of(user))}},
    )
