"""Every form of the storefront, posted with arbitrary text in every field: never a 5xx.

A logged-in customer (the administrator, for the admin forms) posts, with the session's valid
CSRF token, any text a form field can carry: NUL, lone surrogates (sent as the invalid UTF-8
bytes ``surrogatepass`` gives them), strings of thousands of characters, numbers a form
parser or ``Decimal`` chokes on (``1e400``, ``NaN``, ``Infinity``, ``-1``), and, to reach past
validation, the form's own values and plausible ones. The ``{id}`` of a path is arbitrary too.
Whatever was sent, the answer is a page (HTML) or a redirect, never a 5xx, and unless it is the
303 of a form that succeeded, money, stock and what records them (the database's
:func:`ledger`) are exactly as before.

Two tests, each on SQLite and PostgreSQL: a Hypothesis search, and a sweep that sends each of a
few of the nastiest values (a body past ``SHOP_MAX_BODY_SIZE`` among them) in every field and
path, one at a time, and lists every request that fails."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pytest
from fastapi import FastAPI
from hypothesis import HealthCheck, Phase, event, given, note, settings
from hypothesis import strategies as st
from shop_testing import (
    DECLINED,
    OK_CARD,
    NewShopper,
    Shopper,
    add_product,
    deposit,
    make_settings,
)
from storefront_forms import Browser, cheap_passwords, form_in, is_html, ledger

from shop.payments import FakeGateway
from shop.settings import Settings

MAX_EXAMPLES = 60


@pytest.fixture(name="settings")  # the shop conftest's, for this module
def shop_settings(database_url: str) -> Settings:
    """No log-in throttle: the fuzzer fails to log in hundreds of times from one address, and
    would lock the customer out (a 429 is no finding; being unable to log in again is)."""
    return make_settings(
        database_url,
        login_max_failures_per_email_and_address=10**9,
        login_max_failures_per_email=10**9,
        login_max_failures_per_address=10**9,
    )


@pytest.fixture(autouse=True)
def _cheap_passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    cheap_passwords(monkeypatch)


# --- what is sent --------------------------------------------------------------------------

#: any text: every code point, lone surrogates and NUL included
TEXT = st.text(st.characters(codec=None) | st.characters(categories=["Cs"]) | st.just("\x00"))
#: numbers as people (and attackers) type them
NUMBERS = st.sampled_from(
    [
        "1e400",
        "-1e400",
        "1e27",
        "1e-400",
        "-1",
        "0",
        "-0",
        "0.00",
        "NaN",
        "nan",
        "sNaN",
        "Infinity",
        "-Infinity",
        "inf",
        "0.001",
        "12.505",
        "1_000",
        "0x10",
        "+3",
        "3.0",
        "1e3",
        " 7 ",
        "€12.50",
        "$-5",
        "١٢",  # Arabic-Indic digits: int() reads them
        "\uff12",  # a full-width 2
        "99999999999999999999",
        "2147483648",
        "9223372036854775808",
        "9" * 400,
        "4242 4242 4242 4242",
        "0:1",
        "1:0,1:1",
    ]
)
#: long text, a form of it within SHOP_MAX_BODY_SIZE (1 MiB) once encoded: a 🛒 takes 12
#: bytes, and a form has at most 6 fields; past the limit is the sweep's (see NASTIEST)
LONG = st.builds(
    lambda unit, times: unit * times,
    st.sampled_from(["9", "a", "\x00", "é", "1:1,", "\ud800", "🛒"]),
    st.integers(1_000, 12_000),
)


def anything() -> st.SearchStrategy[str]:
    return st.one_of(
        TEXT,
        NUMBERS,
        LONG,
        st.integers(-(2**70), 2**70).map(str),
        st.decimals(allow_nan=True, allow_infinity=True).map(str),
    )


@dataclass(frozen=True)
class Route:
    path: str
    fields: tuple[str, ...]
    #: the page whose form posts here (its hidden fields are the starting point)
    page: str | None = None
    admin: bool = False


ROUTES = [
    Route("/cart/items", ("product_id", "quantity", "next"), page="/"),
    Route("/cart/items/{id}", ("quantity",), page="/cart"),
    Route("/cart/items/{id}/remove", (), page="/cart"),
    Route(
        "/checkout", ("cart", "checkout_key", "method", "card_number", "account_id"), "/checkout"
    ),
    Route("/account/deposits", ("form_key", "account_id", "amount", "card_number"), "/account"),
    Route(
        "/account/transfers", ("form_key", "from_account_id", "to_account_id", "amount"), "/account"
    ),
    Route("/login", ("next", "email", "password"), page="/login"),
    Route("/signup", ("next", "name", "email", "password"), page="/signup"),
    Route("/sessions/others", (), page="/sessions"),
    Route("/logout", (), page="/"),
    Route("/admin/products", ("sku", "name", "price", "stock"), "/admin/products", admin=True),
    Route("/admin/products/{id}", ("price", "stock"), "/admin/products", admin=True),
]
#: fields no form has, and one that several have, for good measure
STRAY_FIELDS = st.sampled_from(["", "x", "quantity", "price", "method", "\x00", "a" * 300]) | TEXT


@dataclass
class World:
    """What the fuzzer works on: a customer with money, the admin, a product, another account."""

    customer: Browser
    shopper: Shopper
    admin: Browser
    admin_shopper: Shopper
    product_id: int
    other_account: int

    def plausible(self, name: str) -> list[str]:
        """Values that pass a field's validation, so that what comes after is reached."""
        me, other, product = self.shopper.account_id, self.other_account, self.product_id
        return {
            "product_id": [str(product), "999999"],
            "quantity": ["1", "2", "0", "10000"],
            "next": ["/", "/cart", "//evil.example"],
            "cart": [f"{product}:1", f"{product}:2", ""],
            "checkout_key": ["form-fuzz-1", "form-fuzz-2"],
            "form_key": ["form-fuzz-3", "form-fuzz-4"],
            "method": ["card", "account"],
            "card_number": [OK_CARD, DECLINED, "4242 4242 4242 4242"],
            "account_id": [str(me), str(other), "999999"],
            "from_account_id": [str(me), str(other)],
            "to_account_id": [str(other), str(me), "999999"],
            "amount": ["1.00", "12.5", "0.01", "1000000.00"],
            "email": [self.shopper.email, "new.fuzz@example.com", "ADMIN@example.com"],
            "password": [self.shopper.password, "a good password"],
            "name": ["Ada", " ", "Ada Lovelace"],
            "sku": ["fuzz-sku", "mug"],
            "price": ["13.5", "0", "1000000"],
            "stock": ["0", "5", "1000000000"],
        }.get(name, [""])

    async def logged_in(self) -> None:
        """The customer logged in as themselves, with their session's token: the fuzzer may
        have logged them out, in as someone else, or ended the session."""
        for browser, who in ((self.customer, self.shopper), (self.admin, self.admin_shopper)):
            session = await browser.client.get("/api/session")
            if session.status_code == 200 and session.json()["user"]["id"] == who.user_id:
                browser.csrf = session.json()["csrf_token"]
                continue
            await who.login_again()
            browser.csrf = who.csrf


@pytest.fixture
async def world(
    app: FastAPI, admin: Shopper, new_shopper: NewShopper, gateway: FakeGateway
) -> World:
    shopper: Shopper = await new_shopper()
    other: Shopper = await new_shopper()
    product_id = await add_product(admin, "mug", price=1250, stock=1000)
    assert (await deposit(shopper, 100_000)).status_code == 201
    customer = Browser(shopper.client, shopper.csrf)
    response = await customer.post("/cart/items", {"product_id": str(product_id)})
    assert response.status_code == 303
    return World(
        customer, shopper, Browser(admin.client, admin.csrf), admin, product_id, other.account_id
    )


def path_segment(world: World) -> st.SearchStrategy[str]:
    return st.one_of(
        st.just(str(world.product_id)),
        st.integers(-(2**70), 2**70).map(str),
        NUMBERS,
        st.text(min_size=1),
        TEXT.filter(bool),
    )


async def the_form(browser: Browser, route: Route, path: str) -> dict[str, str]:
    """The hidden and prefilled fields of the page's form for this route, if it shows one."""
    if route.page is None:
        return {}
    page = await browser.get(route.page)
    if page.status_code != 200:
        return {}
    try:
        return form_in(page.text, path).fields
    except AssertionError:
        return {}  # no such form on the page (an empty cart, another {id})


@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate, Phase.shrink],  # no "explain": slow, and noisy
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
async def test_any_text_in_any_form_field_is_never_a_5xx(
    app: FastAPI, world: World, data: st.DataObject
) -> None:
    await world.logged_in()
    route: Route = data.draw(st.sampled_from(ROUTES), label="route")
    browser = world.admin if route.admin else world.customer
    segment = data.draw(path_segment(world), label="{id}") if "{id}" in route.path else ""
    quoted = quote(segment.encode("utf-8", "surrogatepass"), safe="")
    path = route.path.replace("{id}", quoted)
    form = await the_form(browser, route, route.path.replace("{id}", segment))

    fields: list[tuple[str, str]] = [
        (name, value) for name, value in form.items() if name != "csrf_token"
    ]
    for name in route.fields:
        choice = data.draw(
            st.sampled_from(["anything", "plausible", "the form's", "missing"]), label=name
        )
        fields = [(n, v) for n, v in fields if n != name]
        if choice == "anything":
            fields.append((name, data.draw(anything(), label=name)))
        elif choice == "plausible":
            fields.append((name, data.draw(st.sampled_from(world.plausible(name)), label=name)))
        elif choice == "the form's" and name in form:
            fields.append((name, form[name]))
    if data.draw(st.booleans(), label="a stray field"):
        stray = data.draw(STRAY_FIELDS.filter(lambda n: n != "csrf_token"), label="stray name")
        fields.append((stray, data.draw(anything(), label="stray value")))
    note(f"POST {path} {[(n, v[:200]) for n, v in fields]}")
    before = await ledger(app)

    response = await browser.post(path, fields)

    event(f"{route.path}: {response.status_code}")
    assert response.status_code < 500, (path, response.status_code, response.text[:2000])
    if 300 <= response.status_code < 400:
        assert response.headers.get("location"), response.headers
    else:
        assert is_html(response), (path, response.status_code, response.headers, response.text)
    if response.status_code != 303:
        assert await ledger(app) == before, (path, response.status_code)


# --- the nastiest values, in every field of every form, one at a time -----------------------

#: what the random search may take long to hit: each is sent in every field, and as {id}
NASTIEST = [
    "1e400",
    "-1e400",
    "NaN",
    "Infinity",
    "-1",
    "0",
    "\x00",
    "\ud800",
    "9" * 400,
    "1:1," * 600,
    "x" * (1024 * 1024 + 1),  # past SHOP_MAX_BODY_SIZE
]


def assert_page(response: Any, *, before: Any = None, after: Any = None) -> str | None:
    """None if the answer is fine; else what is wrong with it."""
    if response.status_code >= 500:
        return f"{response.status_code}: {response.text[:300]!r}"
    if 300 <= response.status_code < 400:
        return None if response.headers.get("location") else "a redirect with no Location"
    if response.status_code == 413 and before == after:
        return None  # answered by the body-size limit before the app, as for the API: text
    if not is_html(response):
        kind = response.headers.get("content-type")
        return f"{response.status_code} as {kind}: {response.text[:100]!r}"
    if response.status_code != 303 and before != after:
        return f"{response.status_code}, and the ledger changed: {before} -> {after}"
    return None


async def test_the_nastiest_values_in_every_field_of_every_form(app: FastAPI, world: World) -> None:
    """Each of :data:`NASTIEST` in each field (the rest of the form as the page has it), and
    as each path's {id}: every failing request is listed, not just the first."""
    failures: list[str] = []
    for route in ROUTES:
        names: list[str | None] = [*route.fields, "{id}" if "{id}" in route.path else None]
        for name in filter(None, names):
            for value in NASTIEST:
                if name == "{id}" and len(value) > 10_000:
                    continue  # no client sends an URL that long (httpx refuses to)
                await world.logged_in()
                browser = world.admin if route.admin else world.customer
                real = route.path.replace("{id}", str(world.product_id))
                form = await the_form(browser, route, real)
                fields = {n: v for n, v in form.items() if n != "csrf_token"}
                path = real
                if name == "{id}":
                    path = route.path.replace(
                        "{id}", quote(value.encode("utf-8", "surrogatepass"), safe="")
                    )
                else:
                    fields[name] = value
                before = await ledger(app)
                response = await browser.post(path, fields)
                after = await ledger(app) if response.status_code != 303 else before
                wrong = assert_page(response, before=before, after=after)
                if wrong:
                    shown = value if len(value) <= 20 else f"{value[:8]!r}... ({len(value)} chars)"
                    failures.append(f"POST {route.path} {name}={shown!r}: {wrong}")
    assert failures == [], "\n".join(failures)
