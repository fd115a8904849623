"""The shop's session read as FastAPI has it, with nothing behind it: what the route's shape
costs in FastAPI itself, before any web session, database or library.

The same shape as the shop's ``GET /api/session``: a router included under ``/api``; the route
depends on the current user, which depends on the web session and on the cookie's security
scheme (an ``APIKeyCookie``, so that the OpenAPI schema documents it); a response model with a
nested model and a datetime; FastAPI's app-wide body limit. The web session and the user are
constants: no cookie is checked, nothing is read. No middleware.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request, Security
from fastapi.security import APIKeyCookie
from pydantic import BaseModel

session_cookie = APIKeyCookie(name="shop_session", auto_error=False)


class UserOut(BaseModel):
    id: int
    name: str
    email: str
    roles: list[str]


class SessionOut(BaseModel):
    user: UserOut
    csrf_token: str
    order_ids: list[int]
    expires_at: datetime


SESSION: dict[str, Any] = {"user_id": 1, "csrf_token": "t" * 43, "order_ids": [1, 2, 3]}
USER = UserOut(id=1, name="Bench", email="bench@example.com", roles=[])
EXPIRES = datetime(2030, 1, 1, tzinfo=UTC)


async def web_session(request: Request) -> dict[str, Any]:
    return SESSION


WebSession = Annotated[dict[str, Any], Depends(web_session)]


async def current_user(
    websession: WebSession, _cookie: Annotated[str | None, Security(session_cookie)]
) -> UserOut:
    return USER


CurrentUser = Annotated[UserOut, Depends(current_user)]

router = APIRouter(tags=["session"])


@router.get("/session")
async def get_session(user: CurrentUser, websession: WebSession) -> SessionOut:
    return SessionOut(
        user=user,
        csrf_token=websession["csrf_token"],
        order_ids=websession["order_ids"],
        expires_at=EXPIRES,
    )


app = FastAPI(max_body_size=1024 * 1024)
app.include_router(router, prefix="/api")


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}
