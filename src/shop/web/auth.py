"""Log-in, sign-up (which logs in), log-out, and where the user is logged in."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import Response

from fastapi_atomic import DBDep, UnitOfWorkDep
from fastapi_atomic.websession import WebSession, WebSessionDep
from shop.api.deps import LoginThrottleDep
from shop.errors import Conflict, ShopError
from shop.services import accounts, auth

from .forms import LoginForm, SignUpForm, read_form, typed_values
from .pages import Customer, FormChecks, flash, local_url, redirect, render

router = APIRouter(include_in_schema=False)

NextQuery = Annotated[str | None, Query(alias="next", max_length=2000)]
NextField = Annotated[str | None, Form(alias="next", max_length=2000)]


@router.get("/login")
async def login_page(
    request: Request, websession: WebSessionDep, next_url: NextQuery = None
) -> Response:
    return _page(request, websession, "login.html", local_url(next_url))


@router.post("/login", dependencies=FormChecks)
async def log_in(
    request: Request,
    uow: UnitOfWorkDep,
    websession: WebSessionDep,
    throttle: LoginThrottleDep,
    next_url: NextField = None,
) -> Response:
    target = local_url(next_url)
    form, errors = await read_form(request, LoginForm)
    if form is None:
        return await _failed(request, websession, "login.html", target, errors=errors)
    # the peer, or the client a trusted proxy names (`shop serve --forwarded-allow-ips`)
    address = request.client.host if request.client else "unknown"
    try:
        user = await auth.authenticate(
            uow, throttle, email=form.email, password=form.password, address=address
        )
    except ShopError as exc:
        page = await _failed(
            request, websession, "login.html", target, error=exc.detail, status_code=exc.status_code
        )
        page.headers.update(exc.headers)
        return page
    auth.log_in(websession, user)
    flash(websession, f"Welcome back, {user.name}.")
    return redirect(target)


@router.get("/signup")
async def signup_page(
    request: Request, websession: WebSessionDep, next_url: NextQuery = None
) -> Response:
    return _page(request, websession, "signup.html", local_url(next_url))


@router.post("/signup", dependencies=FormChecks)
async def sign_up(
    request: Request, db: DBDep, websession: WebSessionDep, next_url: NextField = None
) -> Response:
    target = local_url(next_url)
    form, errors = await read_form(request, SignUpForm)
    if form is None:
        return await _failed(request, websession, "signup.html", target, errors=errors)
    try:
        user = await accounts.sign_up(db, name=form.name, email=form.email, password=form.password)
    except Conflict as exc:
        return await _failed(
            request,
            websession,
            "signup.html",
            target,
            errors={"email": exc.detail},
            status_code=409,
        )
    auth.log_in(websession, user)  # signing up logs in; a guest's cart is kept
    flash(websession, f"Welcome, {user.name}! Your account is ready.")
    return redirect(target)


@router.post("/logout", dependencies=FormChecks)
async def log_out(websession: WebSessionDep) -> Response:
    if websession.is_live:
        websession.invalidate()
        flash(websession, "You are logged out.")  # in a new, empty guest session
    return redirect("/")


@router.get("/sessions")
async def sessions_page(request: Request, websession: WebSessionDep, _user: Customer) -> Response:
    sessions = await websession.list_sessions()
    return render(request, websession, "sessions.html", {"sessions": sessions})


@router.post("/sessions/others", dependencies=FormChecks)
async def log_out_others(websession: WebSessionDep, _user: Customer) -> Response:
    ended = await websession.invalidate_others()
    flash(websession, f"Logged out {ended} other session{'s' if ended != 1 else ''}.")
    return redirect("/sessions")


def _page(request: Request, websession: WebSession, template: str, target: str) -> Response:
    return render(request, websession, template, {"next": target, "values": {}, "errors": {}})


async def _failed(
    request: Request,
    websession: WebSession,
    template: str,
    target: str,
    *,
    errors: dict[str, str] | None = None,
    error: str | None = None,
    status_code: int = 422,
) -> Response:
    context = {
        "next": target,
        "values": await typed_values(request),
        "errors": errors or {},
        "error": error,
    }
    return render(request, websession, template, context, status_code=status_code)
