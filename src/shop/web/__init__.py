"""The storefront: server-rendered pages over the same services as the JSON API.

Plain HTML forms, posted and answered with a redirect, so every page works without
JavaScript; a few lines of it only keep a button from being pressed twice. The cart lives in
the web session; every form carries the session's CSRF token.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles

from . import account, admin, auth, cart_pages, catalogue, checkout, orders
from .pages import HERE, LoginRequired, error_page, login_url, redirect, wants_page

router = APIRouter(include_in_schema=False)
for module in (catalogue, cart_pages, checkout, orders, account, auth, admin):
    router.include_router(module.router)


def static_files() -> StaticFiles:
    return StaticFiles(directory=HERE / "static")


#: an error's page: its heading, and what to do when the detail alone does not say it
TITLES = {
    400: "This request could not be read",
    401: "Please log in",
    403: "Not allowed",
    404: "Page not found",
    405: "This page cannot be used that way",
    409: "Please wait a moment",
    422: "This form could not be read",
    429: "Too many attempts",
    500: "Something went wrong on our side",
    503: "The shop is unavailable for a moment",
}
HINTS = {
    404: "The link may be old. The catalogue is a good place to start again.",
    409: "The same form is still being handled. Reload this page in a moment.",
    500: "Nothing was changed. Please try again in a moment.",
    503: "Please try again in a moment.",
}
#: a form refused by its CSRF token or the site it came from, said to a person, not a client
FORM_REFUSED = (
    "This form was sent without this page's security token, or from another site. "
    "Go back, reload the page and try again."
)


def error_response(request: Request, status_code: int, detail: str) -> Response:
    """An error whose detail is written for people (the shop's own) as a page: a heading,
    what happened, what to do."""
    title = TITLES.get(status_code, "This did not work")
    return error_page(request, status_code, title, f"{detail} {HINTS.get(status_code, '')}".strip())


def http_error_response(request: Request, status_code: int, detail: str) -> Response:
    """An HTTPException of FastAPI's or the library's, whose detail is written for an API
    client, as a page."""
    if status_code == 403:
        return error_page(request, 403, "This form could not be accepted", FORM_REFUSED)
    return error_response(request, status_code, detail)


async def login_required(request: Request, exc: LoginRequired) -> Response:
    """A guest on a page for logged-in users: to the log-in page, and back here after."""
    target = exc.next_url
    if request.method != "GET":  # back to the page the form was on, not to the form's target
        referer = urlsplit(request.headers.get("referer", ""))
        target = referer.path if referer.netloc == request.url.netloc and referer.path else "/"
    return redirect(login_url(target))


__all__ = [
    "error_response",
    "http_error_response",
    "login_required",
    "router",
    "static_files",
    "wants_page",
]
