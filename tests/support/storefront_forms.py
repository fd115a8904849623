"""Driving the storefront's HTML forms in-process, as a browser without JavaScript would.

A :class:`Browser` is one cookie jar: it reads a page (``Accept: text/html``), finds a form in it
with the standard library's HTML parser, and posts that form's fields back,
``application/x-www-form-urlencoded``, from the shop's own origin (``Origin`` and
``Sec-Fetch-Site: same-origin``, as a browser sends them). It keeps the CSRF token of the last
page it read, so that a form built by hand can carry it too.

:func:`ledger` reads what no failed form may change straight from the database.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any
from urllib.parse import quote_plus, urljoin, urlsplit

import httpx
import pytest
from argon2 import PasswordHasher
from fastapi import FastAPI
from sqlalchemy import func, select

from shop.db.models import Account, Deposit, Order, Product, Transfer, User
from shop.services import passwords

ORIGIN = "http://shop.test"
#: what a browser sends for a page
PAGE = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
#: what a browser adds to a form it posts to the page's own site
SAME_ORIGIN = {"Origin": ORIGIN, "Sec-Fetch-Site": "same-origin"}
FORM_TYPE = "application/x-www-form-urlencoded"

Fields = Mapping[str, str] | Sequence[tuple[str, str]]


def encode_form(fields: Fields) -> bytes:
    """``application/x-www-form-urlencoded``, with what no browser would send left in: a NUL
    stays a NUL, and a lone surrogate is sent as the (invalid UTF-8) bytes ``surrogatepass``
    gives it, which the server must cope with."""
    pairs = fields.items() if isinstance(fields, Mapping) else fields

    def part(text: str) -> str:
        return quote_plus(text.encode("utf-8", "surrogatepass"))

    return "&".join(f"{part(name)}={part(value)}" for name, value in pairs).encode("ascii")


# --- reading pages -----------------------------------------------------------------------


@dataclass
class Form:
    """One ``<form>``: where it posts, and what submitting it unchanged sends."""

    action: str
    method: str
    #: hidden and text fields, the checked radio, each select's chosen option
    fields: dict[str, str] = field(default_factory=dict)
    #: every field's name, whether it would be sent or not (an unchecked radio, say)
    names: set[str] = field(default_factory=set)
    #: the options each select offers
    options: dict[str, list[str]] = field(default_factory=dict)


class _Forms(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.forms: list[Form] = []
        self._form: Form | None = None
        self._select: str | None = None
        self._select_chosen = False
        self._textarea: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {name: value if value is not None else "" for name, value in attrs}
        if tag == "form":
            self._form = Form(a.get("action", ""), a.get("method", "get").lower())
            self.forms.append(self._form)
            return
        form = self._form
        if form is None:
            return
        name = a.get("name")
        if tag == "input" and name:
            form.names.add(name)
            kind = a.get("type", "text").lower()
            if "disabled" in a or kind in ("submit", "button", "reset", "image", "file"):
                return
            if kind in ("radio", "checkbox"):
                if "checked" in a:
                    form.fields[name] = a.get("value", "on")
                return
            form.fields[name] = a.get("value", "")
        elif tag == "select" and name:
            form.names.add(name)
            form.options[name] = []
            self._select, self._select_chosen = name, False
        elif tag == "option" and self._select is not None:
            value = a.get("value", "")
            form.options[self._select].append(value)
            if "selected" in a:  # the selected option, else the first
                form.fields[self._select], self._select_chosen = value, True
            elif not self._select_chosen and len(form.options[self._select]) == 1:
                form.fields[self._select] = value
        elif tag == "textarea" and name:
            form.names.add(name)
            form.fields[name] = ""
            self._textarea = name

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._form = None
        elif tag == "select":
            self._select = None
        elif tag == "textarea":
            self._textarea = None

    def handle_data(self, data: str) -> None:
        if self._form is not None and self._textarea is not None:
            self._form.fields[self._textarea] += data


def forms_in(page: str) -> list[Form]:
    parser = _Forms()
    parser.feed(page)
    parser.close()
    return parser.forms


def form_in(page: str, action: str) -> Form:
    """The page's (first) form posted to ``action``."""
    for form in forms_in(page):
        if form.action == action:
            return form
    actions = [form.action for form in forms_in(page)]
    raise AssertionError(f"no form posts to {action!r} on this page (only to {actions})")


def _text(fragment: str) -> str:
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", fragment)).split())


def by_testid(page: str, testid: str) -> list[str]:
    """The text of every element whose ``data-testid`` is ``testid``."""
    pattern = rf'<(\w+)\b[^>]*\bdata-testid="{re.escape(testid)}"[^>]*>(.*?)</\1>'
    return [_text(match[1]) for match in re.findall(pattern, page, flags=re.DOTALL)]


def error_at(page: str, name: str) -> str | None:
    """The message shown next to the field ``name`` (``data-testid="<name>-error"``)."""
    found = by_testid(page, f"{name}-error")
    return found[0] if found else None


def page_error(page: str) -> str | None:
    """The message for the whole form or page (``role="alert" data-testid="error"``)."""
    pattern = r'<(\w+)\b[^>]*\brole="alert"[^>]*\bdata-testid="error"[^>]*>(.*?)</\1>'
    found = re.findall(pattern, page, flags=re.DOTALL)
    return _text(found[0][1]) if found else None


def flash(page: str) -> str | None:
    found = by_testid(page, "flash")
    return found[0] if found else None


def csrf_token_in(page: str) -> str | None:
    found = re.search(r'name="csrf_token" value="([^"]*)"', page)
    return html.unescape(found[1]) if found else None


def cart_in(page: str) -> dict[str, int]:
    """The cart page's lines: sku → quantity, as the quantity inputs show them."""
    lines = {}
    for row in re.findall(r'<tr data-testid="cart-line".*?</tr>', page, flags=re.DOTALL):
        sku = re.search(r'data-sku="([^"]*)"', row)
        quantity = re.search(r'name="quantity"[^>]*\bvalue="(\d+)"', row)
        assert sku and quantity, row
        lines[html.unescape(sku[1])] = int(quantity[1])
    return lines


def is_html(response: httpx.Response) -> bool:
    return response.headers.get("content-type", "").startswith("text/html")


def lands_on_this_site(location: str) -> bool:
    """Where a browser goes for this ``Location``: it drops tabs and newlines and reads a
    backslash as a slash (the WHATWG URL parser) before resolving it."""
    cleaned = re.sub(r"[\t\n\r]", "", location).replace("\\", "/")
    return urlsplit(urljoin(ORIGIN + "/login", cleaned)).netloc == urlsplit(ORIGIN).netloc


# --- a browser ---------------------------------------------------------------------------


class Browser:
    """One cookie jar posting the storefront's forms; ``csrf`` is the last page's token."""

    def __init__(self, client: httpx.AsyncClient, csrf: str = "") -> None:
        self.client = client
        self.csrf = csrf

    @property
    def cookie(self) -> str | None:
        return self.client.cookies.get("shop_session")

    async def get(self, url: str) -> httpx.Response:
        response = await self.client.get(url, headers=PAGE)
        self._remember_token(response)
        return response

    async def post(
        self,
        url: str,
        fields: Fields = (),
        *,
        csrf: bool = True,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """Post ``fields`` (and the remembered CSRF token, unless ``csrf=False`` or the fields
        carry one) from this site, as a form."""
        pairs = list(fields.items() if isinstance(fields, Mapping) else fields)
        if csrf and self.csrf and "csrf_token" not in {name for name, _ in pairs}:
            pairs.append(("csrf_token", self.csrf))
        sent = {**PAGE, **SAME_ORIGIN, "Content-Type": FORM_TYPE, **(headers or {})}
        sent = {name: value for name, value in sent.items() if value}  # "" drops a header
        response = await self.client.post(url, content=encode_form(pairs), headers=sent)
        self._remember_token(response)
        return response

    async def form(self, page_url: str, action: str) -> Form:
        page = await self.get(page_url)
        assert page.status_code == 200, (page_url, page.status_code, page.text[:500])
        return form_in(page.text, action)

    async def submit(
        self, page_url: str, action: str, values: Mapping[str, str] | None = None
    ) -> httpx.Response:
        """Open ``page_url``, fill its form for ``action`` with ``values`` and post it."""
        form = await self.form(page_url, action)
        return await self.post(action, {**form.fields, **(values or {})})

    async def follow(self, response: httpx.Response) -> httpx.Response:
        """The page a 303 sends the browser to."""
        assert response.status_code == 303, (response.status_code, response.text[:500])
        return await self.get(response.headers["location"])

    async def cart(self) -> dict[str, int]:
        page = await self.get("/cart")
        assert page.status_code == 200
        return cart_in(page.text)

    def _remember_token(self, response: httpx.Response) -> None:
        if is_html(response):
            token = csrf_token_in(response.text)
            if token:
                self.csrf = token


# --- what the database holds -------------------------------------------------------------


@dataclass(frozen=True)
class Ledger:
    """Money, stock and what records them: what a refused form must leave as it was."""

    money: int
    stock: int
    products: tuple[tuple[Any, ...], ...]
    paid_orders: int
    deposits: int
    transfers: int
    users: int


async def ledger(app: FastAPI) -> Ledger:
    async with app.state.engine.connect() as connection:

        async def one(query: Any) -> int:
            return int((await connection.execute(query)).scalar_one() or 0)

        products = (
            await connection.execute(
                select(
                    Product.id, Product.sku, Product.name, Product.price, Product.stock
                ).order_by(Product.id)
            )
        ).all()
        return Ledger(
            money=await one(select(func.coalesce(func.sum(Account.balance), 0))),
            stock=await one(select(func.coalesce(func.sum(Product.stock), 0))),
            products=tuple(tuple(row) for row in products),
            paid_orders=await one(
                select(func.count()).select_from(Order).where(Order.status == "paid")
            ),
            deposits=await one(
                select(func.count()).select_from(Deposit).where(Deposit.status == "succeeded")
            ),
            transfers=await one(select(func.count()).select_from(Transfer)),
            users=await one(select(func.count()).select_from(User)),
        )


def cheap_passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    """Argon2 at its lowest cost, for tests that sign up and log in often and test the pages,
    not the hash (a hash made with the default parameters still verifies). Call it before the
    app starts: the administrator is created then."""
    monkeypatch.setattr(
        passwords, "_hasher", PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
    )
