"""Logging in and out, and the user's sessions."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Request, status
from pydantic import BaseModel, Field

from fastapi_atomic import UnitOfWorkDep
from fastapi_atomic.websession import WebSessionDep
from shop.fields import Email, Text
from shop.services import auth

from .deps import Csrf, CurrentUser, LoginThrottleDep, SessionUser
from .responses import BODY, NO_CSRF_TOKEN, NOT_LOGGED_IN, PARAMETERS, error, header, success
from .schemas import StrictModel

router = APIRouter(tags=["session"])


class Login(StrictModel):
    email: Email
    password: Annotated[str, Field(min_length=1, max_length=1024), Text]


class UserOut(BaseModel):
    id: int
    name: str
    email: str
    roles: list[str]

    @classmethod
    def of(cls, user: SessionUser) -> UserOut:
        return cls(id=user.id, name=user.name, email=user.email, roles=list(user.roles))


class LoggedIn(BaseModel):
    user: UserOut
    csrf_token: str


class SessionOut(BaseModel):
    user: UserOut
    csrf_token: str
    order_ids: list[int]
    expires_at: datetime


class SessionListItem(BaseModel):
    id: str
    created_at: datetime
    last_seen_at: datetime
    user_agent: str
    current: bool


def _utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)


#: logging in sets the session cookie; logging out clears it and the browser's cookies
SETS_COOKIE = {"Set-Cookie": header("The session cookie.")}
#: on a 429: the log-in may be tried again then
BLOCK_ENDS = {
    "Retry-After": header(
        "Seconds until the failures that block it are too old to count.", {"type": "integer"}
    )
}
CLEARS_COOKIE = {
    "Set-Cookie": header("The session cookie, cleared."),
    "Clear-Site-Data": header('`"cookies"`'),
}


@router.get("/session", responses={200: success(private=True), 401: NOT_LOGGED_IN})
async def get_session(user: CurrentUser, websession: WebSessionDep) -> SessionOut:
    assert websession.csrf_token is not None and websession.expires_at is not None
    order_ids = websession.get("order_ids", [])
    return SessionOut(
        user=UserOut.of(user),
        csrf_token=websession.csrf_token,
        order_ids=order_ids if isinstance(order_ids, list) else [],
        expires_at=_utc(websession.expires_at),
    )


@router.post(
    "/session",
    responses={
        **BODY,
        200: success(private=True, headers=SETS_COOKIE),
        401: error("Wrong e-mail or password.", private=True),
        429: error(
            "Too many failed log-ins for this e-mail or from this address.",
            private=True,
            headers=BLOCK_ENDS,
        ),
    },
)
async def log_in(
    body: Login,
    request: Request,
    uow: UnitOfWorkDep,
    websession: WebSessionDep,
    throttle: LoginThrottleDep,
) -> LoggedIn:
    # the peer, or the client a trusted proxy names (`shop serve --forwarded-allow-ips`)
    address = request.client.host if request.client else "unknown"
    user = await auth.authenticate(
        uow, throttle, email=body.email, password=body.password, address=address
    )
    auth.log_in(websession, user)
    profile = SessionUser(id=user.id, name=user.name, email=user.email, roles=auth.roles_of(user))
    assert websession.csrf_token is not None
    return LoggedIn(user=UserOut.of(profile), csrf_token=websession.csrf_token)


@router.delete(
    "/session",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={
        **PARAMETERS,
        204: success(private=True, headers=CLEARS_COOKIE),
        401: NOT_LOGGED_IN,
        403: NO_CSRF_TOKEN,
    },
    dependencies=[Csrf],
)
async def log_out(_user: CurrentUser, websession: WebSessionDep) -> None:
    websession.invalidate()


@router.get("/sessions", responses={200: success(private=True), 401: NOT_LOGGED_IN})
async def list_sessions(_user: CurrentUser, websession: WebSessionDep) -> list[SessionListItem]:
    return [
        SessionListItem(
            id=info.id,
            created_at=_utc(info.created_at),
            last_seen_at=_utc(info.last_seen_at),
            user_agent=info.user_agent,
            current=info.current,
        )
        for info in await websession.list_sessions()
    ]


@router.delete(
    "/sessions/others",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={**PARAMETERS, 204: success(private=True), 401: NOT_LOGGED_IN, 403: NO_CSRF_TOKEN},
    dependencies=[Csrf],
)
async def log_out_others(_user: CurrentUser, websession: WebSessionDep) -> None:
    await websession.invalidate_others()
