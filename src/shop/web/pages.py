"""What every storefront page shares: templates, the visitor, messages, redirects.

Pages are plain HTML forms posted to the server and answered with a redirect (post, redirect,
get), so they work without JavaScript; a failed form is rendered again, with its status, the
message next to the field that caused it, and nothing changed.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

from fastapi import Depends, HTTPException, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from fastapi_atomic import IdempotencyKey, claim_idempotency_key
from fastapi_atomic.websession import WebSession, WebSessionDep
from shop.api.deps import Csrf, SessionUser, session_user
from shop.errors import CardDeclined, Forbidden, ShopError

from .cart import Cart

HERE = Path(__file__).parent
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
CURRENCY_SYMBOLS = {"EUR": "€", "USD": "$", "GBP": "£", "JPY": "¥", "CHF": "CHF "}

templates = Jinja2Templates(directory=HERE / "templates")


def money(cents: int, currency: str = "EUR") -> str:
    """``€12.50``: amounts are kept in cents and shown in the currency's units."""
    sign = "-" if cents < 0 else ""
    units, rest = divmod(abs(cents), 100)
    return f"{sign}{CURRENCY_SYMBOLS.get(currency, currency + ' ')}{units:,}.{rest:02d}"


def timestamp(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%d %b %Y, %H:%M UTC")


def units(cents: int) -> str:
    """``12.50``: an amount as a form field shows it."""
    return f"{cents // 100}.{cents % 100:02d}"


templates.env.filters["units"] = units


# --- who is visiting ---------------------------------------------------------------------


class LoginRequired(Exception):
    """A page for logged-in users asked for by a guest: answered with the log-in page."""

    def __init__(self, next_url: str) -> None:
        super().__init__(next_url)
        self.next_url = next_url


async def visitor(websession: WebSessionDep) -> SessionUser | None:
    """The logged-in user, or None for a guest (a page shows both)."""
    return session_user(websession)


Visitor = Annotated[SessionUser | None, Depends(visitor)]


async def customer(request: Request, user: Visitor) -> SessionUser:
    if user is None:
        raise LoginRequired(_here(request))
    return user


Customer = Annotated[SessionUser, Depends(customer)]


async def administrator(user: Customer) -> SessionUser:
    if not user.is_admin:
        raise Forbidden("Only an administrator may see this page.")
    return user


Administrator = Annotated[SessionUser, Depends(administrator)]


def _here(request: Request) -> str:
    query = f"?{request.url.query}" if request.url.query else ""
    return request.url.path + query if request.method == "GET" else request.url.path


def login_url(next_url: str) -> str:
    return f"/login?next={quote(next_url, safe='/')}"


def local_url(url: str | None, default: str = "/") -> str:
    """Where to go next: a path on this site only (``//evil.example`` is not one)."""
    if not url or not url.startswith("/") or url.startswith("//") or "\\" in url:
        return default
    return url


async def same_origin(request: Request) -> None:
    """Refuse a form posted from another site (OWASP's Fetch Metadata and Origin checks): the
    CSRF token covers a visitor with a session; this covers a guest's first post (log-in,
    sign-up, a first "Add to cart") too."""
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return
    site = request.headers.get("sec-fetch-site")
    origin = request.headers.get("origin")
    if site is not None:
        cross_site = site not in ("same-origin", "none")
    else:
        # A browser without Fetch Metadata: its Origin ("null" is no origin of ours), by host
        # alone, since behind a proxy that ends TLS the app may see http for https.
        cross_site = origin is not None and urlsplit(origin).netloc != request.url.netloc
    if cross_site:
        raise HTTPException(403, "This form was sent from another site.")


#: every form post: from this site, with the session's token
FormChecks = [Depends(same_origin), Csrf]


# --- answers -----------------------------------------------------------------------------


def flash(websession: WebSession, text: str) -> None:
    """A message for the next page (after the redirect), kept in the web session."""
    websession["flash"] = text


def redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def form_key() -> str:
    """An idempotency key for one rendering of a form: submitting it twice is one operation."""
    return "form-" + secrets.token_urlsafe(18)


def render(
    request: Request,
    websession: WebSession,
    template: str,
    context: dict[str, Any] | None = None,
    *,
    status_code: int = 200,
) -> Response:
    """A page, with what the layout needs: the visitor, their cart's size, the message left
    for this page, the CSRF token for its forms."""
    settings = request.app.state.settings
    message = None
    if websession.is_live and "flash" in websession:
        message = websession["flash"]
        if status_code < 400:  # shown now; a failed page's changes are not kept
            del websession["flash"]
    currency = settings.currency
    values: dict[str, Any] = {
        "user": session_user(websession),
        "csrf_token": websession.csrf_token or "",
        "cart_count": Cart(websession).count,
        "flash": message,
        "money": lambda cents: money(int(cents), currency),
        "test_cards": settings.env == "development",
        "path": request.url.path,
        "timestamp": timestamp,
    }
    values.update(context or {})
    return _page(request, template, values, status_code)


def _page(request: Request, template: str, values: dict[str, Any], status_code: int) -> Response:
    headers = {**SECURITY_HEADERS, "Cache-Control": "no-store"}
    return templates.TemplateResponse(
        request, template, values, status_code=status_code, headers=headers
    )


def error_page(request: Request, status_code: int, title: str, detail: str) -> Response:
    """An error as a page: the layout without the visitor, since the web session may be the
    error's cause (or not loaded at all: the error came before the route)."""
    values = {
        "title": title,
        "detail": detail,
        "user": None,
        "csrf_token": "",
        "cart_count": None,
        "flash": None,
        "path": request.url.path,
    }
    return _page(request, "error.html", values, status_code)


#: a declined card as a shopper is told of it; the API's detail names the gateway's code
CARD_DECLINED = "Your card was declined. Check the number, or use another card."
CARD_DECLINED_BECAUSE = {
    "insufficient_funds": "Your card was declined: not enough funds on it. Use another card.",
    "expired_card": "Your card has expired. Use another card.",
}


def refusal(exc: ShopError) -> str:
    """What a page says of a refused request: the service's words, but a declined card's
    reason in a shopper's (the API's detail carries the gateway's code)."""
    if isinstance(exc, CardDeclined):
        return CARD_DECLINED_BECAUSE.get(exc.code or "", CARD_DECLINED)
    return exc.detail


def wants_page(request: Request) -> bool:
    """An error for a browser's page request is a page; for the API, JSON."""
    path = request.url.path
    if path.startswith(("/api/", "/static/")) or path in ("/api", "/healthz", "/readyz"):
        return False
    return "text/html" in request.headers.get("accept", "") or request.method == "POST"


async def claim_form_key(
    request: Request, user: SessionUser, key: str | None
) -> IdempotencyKey | None:
    """Claim a form's idempotency key. A second submit of the form (a double click, with no
    JavaScript to stop it) waits for the first to finish, then gets its answer again."""
    if not key:
        return None
    deadline = time.monotonic() + FORM_KEY_WAIT
    while True:
        try:
            return await claim_idempotency_key(request, owner=str(user.id), key=key)
        except HTTPException as exc:
            if exc.status_code != 409 or time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.2)


#: seconds a second submit of a form waits for the first (a card charge takes a few)
FORM_KEY_WAIT = 15.0
