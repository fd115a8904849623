"""The storefront's pages through their HTML forms, on SQLite and PostgreSQL.

Each test drives the forms as a browser without JavaScript does (see ``storefront_forms``):
it reads a page, posts its form (``application/x-www-form-urlencoded``, the page's hidden
``csrf_token``, ``checkout_key`` or ``form_key`` included) and follows the 303. A form that is
refused must leave money, stock, orders and the cart exactly as they were, so most tests read
the database's :func:`ledger` before and compare after.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from urllib.parse import quote

import httpx
import pytest
from fastapi import FastAPI
from shop_testing import DECLINED, OK_CARD, NewShopper, Shopper, add_product, client_for, deposit
from sqlalchemy import func, select
from storefront_forms import (
    Browser,
    by_testid,
    cheap_passwords,
    error_at,
    flash,
    form_in,
    is_html,
    lands_on_this_site,
    ledger,
    page_error,
)

from shop.db.models import Order
from shop.payments import FakeGateway

OpenBrowser = Callable[[], Browser]


@pytest.fixture(autouse=True)
def _cheap_passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    cheap_passwords(monkeypatch)


@pytest.fixture
async def open_browser(app: FastAPI) -> AsyncIterator[OpenBrowser]:
    """A new browser (cookie jar) with no session."""
    clients: list[httpx.AsyncClient] = []

    def make() -> Browser:
        clients.append(client_for(app))
        return Browser(clients[-1])

    yield make
    for client in clients:
        await client.aclose()


def browser_of(shopper: Shopper) -> Browser:
    """The logged-in shopper's own browser (cookie jar and CSRF token)."""
    return Browser(shopper.client, shopper.csrf)


async def add_to_cart(browser: Browser, product_id: int, quantity: int = 1) -> None:
    response = await browser.post(
        "/cart/items", {"product_id": str(product_id), "quantity": str(quantity), "next": "/"}
    )
    assert response.status_code == 303, response.text[:500]
    await browser.follow(response)  # as a browser does: the page, and its token


async def paid_orders(shopper: Shopper) -> list[tuple[int, str, int]]:
    return [(o["id"], o["status"], o["total"]) for o in (await shopper.get("/api/orders")).json()]


async def orders_of(app: FastAPI, user_id: int) -> int:
    """Every order row of the user, whatever its status (a failed one is kept too)."""
    async with app.state.engine.connect() as connection:
        query = select(func.count()).select_from(Order).where(Order.user_id == user_id)
        return int((await connection.execute(query)).scalar_one())


async def balance(shopper: Shopper) -> int:
    return int((await shopper.get("/api/accounts")).json()[0]["balance"])


async def existing_customer(new_shopper: NewShopper) -> tuple[str, str]:
    """Credentials of a customer who exists, taken from the fixture's own sign-up."""
    someone: Shopper = await new_shopper()
    return someone.email, someone.password


# --- 1. one checkout form, submitted twice at once ----------------------------------------


@pytest.mark.parametrize("method", ["card", "account"])
async def test_two_submits_of_one_checkout_form_place_one_order(
    app: FastAPI, admin: Shopper, new_shopper: NewShopper, gateway: FakeGateway, method: str
) -> None:
    shopper: Shopper = await new_shopper()
    mug = await add_product(admin, "mug", price=1250, stock=5)
    if method == "account":
        assert (await deposit(shopper, 10_000)).status_code == 201
    charged = len(gateway.charges)
    buyer = browser_of(shopper)
    await add_to_cart(buyer, mug, 2)
    form = await buyer.form("/checkout", "/checkout")
    assert form.fields["cart"] == f"{mug}:2"
    assert form.fields["method"] == "card" and form.fields["checkout_key"]
    payment = (
        {"card_number": OK_CARD}
        if method == "card"
        else {"method": "account", "account_id": str(shopper.account_id)}
    )
    fields = {**form.fields, **payment}

    gateway.latency_ms = 300  # the second submit arrives while the first is charging
    first, second = await asyncio.gather(
        buyer.post("/checkout", fields), buyer.post("/checkout", fields)
    )

    assert (first.status_code, second.status_code) == (303, 303), (first.text, second.text)
    assert first.headers["location"] == second.headers["location"]
    order_page = await buyer.follow(first)  # the flash is shown once: on this page
    assert order_page.status_code == 200 and "Thank you" in (flash(order_page.text) or "")
    [(order_id, status, total)] = await paid_orders(shopper)
    assert (status, total) == ("paid", 2500)
    assert first.headers["location"] == f"/orders/{order_id}"
    assert await orders_of(app, shopper.user_id) == 1
    if method == "card":
        assert len(gateway.charges) == charged + 1 and gateway.charges[-1][1] == 2500
    else:
        assert len(gateway.charges) == charged and await balance(shopper) == 10_000 - 2500
    assert await buyer.cart() == {}
    assert (await shopper.get("/api/session")).json()["order_ids"] == [order_id]
    assert (await admin.get("/api/products")).json()[0]["stock"] == 3


@pytest.mark.parametrize("action", ["/account/deposits", "/account/transfers"])
async def test_two_submits_of_one_account_form_move_the_money_once(
    app: FastAPI, new_shopper: NewShopper, gateway: FakeGateway, action: str
) -> None:
    shopper: Shopper = await new_shopper()
    payee: Shopper = await new_shopper()
    if action == "/account/transfers":
        assert (await deposit(shopper, 5000)).status_code == 201
    charged = len(gateway.charges)
    buyer = browser_of(shopper)
    form = await buyer.form("/account", action)
    assert form.fields["form_key"]
    fields = {**form.fields, "amount": "12.50"}
    if action == "/account/deposits":
        fields["card_number"] = OK_CARD
    else:
        fields["to_account_id"] = str(payee.account_id)

    gateway.latency_ms = 300
    first, second = await asyncio.gather(buyer.post(action, fields), buyer.post(action, fields))

    assert (first.status_code, second.status_code) == (303, 303), (first.text, second.text)
    assert first.headers["location"] == second.headers["location"] == "/account"
    if action == "/account/deposits":
        assert await balance(shopper) == 1250
        assert len(gateway.charges) == charged + 1 and gateway.charges[-1][1] == 1250
    else:
        assert (await balance(shopper), await balance(payee)) == (5000 - 1250, 1250)
        assert len(gateway.charges) == charged


# --- 2. a declined card -------------------------------------------------------------------


async def test_a_declined_card_keeps_the_cart_and_a_new_key_places_the_order(
    app: FastAPI, admin: Shopper, new_shopper: NewShopper, gateway: FakeGateway
) -> None:
    shopper: Shopper = await new_shopper()
    mug = await add_product(admin, "mug", price=1000, stock=5)
    buyer = browser_of(shopper)
    await add_to_cart(buyer, mug, 2)
    form = await buyer.form("/checkout", "/checkout")
    before = await ledger(app)

    typed = "4000-0000-0000-0002"  # as a person may type it: the dashes are dropped
    declined = await buyer.post("/checkout", {**form.fields, "card_number": typed})

    assert declined.status_code == 402, declined.text
    assert is_html(declined)
    assert error_at(declined.text, "card_number"), declined.text
    assert DECLINED not in declined.text and typed not in declined.text
    # Said to a person, not in the gateway's code (which the API's detail names).
    assert "Your card was declined." in (error_at(declined.text, "card_number") or "")
    assert "card_declined" not in declined.text
    again = form_in(declined.text, "/checkout")
    # Empty: neither the refused number nor the development test card typed in for them.
    assert again.fields.get("card_number", "") == ""
    assert again.fields["cart"] == form.fields["cart"]
    assert (
        again.fields["checkout_key"] and again.fields["checkout_key"] != form.fields["checkout_key"]
    )
    assert await ledger(app) == before
    assert await paid_orders(shopper) == []
    assert gateway.charges == []
    assert await buyer.cart() == {"mug": 2}

    placed = await buyer.post("/checkout", {**again.fields, "card_number": OK_CARD})
    assert placed.status_code == 303, placed.text
    [(order_id, _, total)] = await paid_orders(shopper)
    assert placed.headers["location"] == f"/orders/{order_id}" and total == 2000
    assert gateway.total_charged == 2000
    assert await buyer.cart() == {}


# --- 3. two tabs adding to one cart --------------------------------------------------------


@pytest.mark.parametrize("who", ["guest", "customer"])
async def test_adds_from_two_tabs_at_once_all_count(
    app: FastAPI,
    admin: Shopper,
    new_shopper: NewShopper,
    open_browser: OpenBrowser,
    who: str,
) -> None:
    mug, cup, pen = [await add_product(admin, sku) for sku in ("mug", "cup", "pen")]
    buyer = browser_of(await new_shopper()) if who == "customer" else open_browser()
    await add_to_cart(buyer, mug, 1)  # a guest's first add makes their session
    cookie = buyer.cookie
    assert cookie is not None

    adds = [(mug, 1)] * 4 + [(cup, 2)] * 3 + [(pen, 5)]
    responses = await asyncio.gather(
        *(
            buyer.post("/cart/items", {"product_id": str(p), "quantity": str(q), "next": "/"})
            for p, q in adds
        )
    )

    assert [r.status_code for r in responses] == [303] * len(adds), [r.text for r in responses]
    assert buyer.cookie == cookie  # the same session throughout
    assert await buyer.cart() == {"mug": 5, "cup": 6, "pen": 5}


async def test_adds_from_two_tabs_at_once_never_take_a_line_past_the_carts_limit(
    app: FastAPI, admin: Shopper, new_shopper: NewShopper, gateway: FakeGateway
) -> None:
    """A cart holds at most 10,000 of one product: a checkout form cannot carry more (its
    ``cart`` field would not be read), so a line past it could never be ordered."""
    shopper: Shopper = await new_shopper()
    mug = await add_product(admin, "mug", price=1, stock=100_000)
    buyer = browser_of(shopper)
    await add_to_cart(buyer, mug, 1)

    responses = await asyncio.gather(
        *(buyer.post("/cart/items", {"product_id": str(mug), "quantity": "6000"}) for _ in range(2))
    )

    statuses = sorted(r.status_code for r in responses)
    cart = await buyer.cart()
    assert cart["mug"] <= 10_000, f"adds answered {statuses} left {cart} in the cart"
    assert set(statuses) <= {303, 422}, [r.text for r in responses]
    form = await buyer.form("/checkout", "/checkout")
    placed = await buyer.post("/checkout", {**form.fields, "card_number": OK_CARD})
    assert placed.status_code == 303, page_error(placed.text)


# --- 4. the cart across signing up, logging in and out --------------------------------------


async def test_a_guests_cart_is_kept_on_sign_up_and_log_in_but_not_for_another_user(
    app: FastAPI, admin: Shopper, new_shopper: NewShopper, open_browser: OpenBrowser
) -> None:
    mug, cup = await add_product(admin, "mug"), await add_product(admin, "cup")
    other_email, other_password = await existing_customer(new_shopper)
    browser = open_browser()
    await browser.get("/")
    await add_to_cart(browser, mug, 2)

    ada = {"name": "Ada", "email": "ada.storefront@example.com", "password": "a good password"}
    signed_up = await browser.submit("/signup", "/signup", ada)
    assert signed_up.status_code == 303, signed_up.text
    home = await browser.follow(signed_up)
    assert by_testid(home.text, "whoami") == ["Ada"]
    assert await browser.cart() == {"mug": 2}, "signing up lost the guest's cart"

    logged_out = await browser.post("/logout")
    assert logged_out.status_code == 303
    await browser.follow(logged_out)
    assert await browser.cart() == {}

    await add_to_cart(browser, cup, 3)  # a guest again
    logged_in = await browser.submit(
        "/login", "/login", {"email": ada["email"], "password": ada["password"]}
    )
    assert logged_in.status_code == 303, logged_in.text
    assert by_testid((await browser.follow(logged_in)).text, "whoami") == ["Ada"]
    assert await browser.cart() == {"cup": 3}, "logging in lost the guest's cart"

    # Another user logging in on this browser, Ada still logged in: Ada's cart is not theirs.
    switched = await browser.submit(
        "/login", "/login", {"email": other_email, "password": other_password}
    )
    assert switched.status_code == 303, switched.text
    assert by_testid((await browser.follow(switched)).text, "whoami") == ["Customer"]
    assert await browser.cart() == {}

    # Log out, log in as Ada, fill the cart, log out, log in as the other user: empty.
    for email, password, cart in (
        (ada["email"], ada["password"], True),
        (other_email, other_password, False),
    ):
        await browser.follow(await browser.post("/logout"))
        response = await browser.submit("/login", "/login", {"email": email, "password": password})
        assert response.status_code == 303
        await browser.follow(response)
        if cart:
            await add_to_cart(browser, mug, 1)
            assert await browser.cart() == {"mug": 1}
    assert await browser.cart() == {}


async def test_logging_out_ends_the_session_on_the_server(
    app: FastAPI, new_shopper: NewShopper
) -> None:
    """The cookie a browser had before logging out must not log anyone in again (a copy of it
    in another tab, a shared computer's history)."""
    shopper: Shopper = await new_shopper()
    browser = browser_of(shopper)
    old_cookie = browser.cookie
    assert old_cookie is not None
    await browser.get("/")
    logged_out = await browser.post("/logout")
    assert logged_out.status_code == 303
    assert browser.cookie != old_cookie
    async with client_for(app) as replay:
        replay.cookies.set("shop_session", old_cookie, domain="shop.test")
        still = await replay.get("/api/session")
        assert still.status_code == 401, f"POST /logout left the old session alive: {still.text}"


# --- 5. the session ended while the checkout page was open ----------------------------------


@pytest.mark.parametrize("how", ["logged out from another device", "cookie dropped"])
async def test_a_session_that_ended_on_the_checkout_page_logs_in_and_keeps_the_cart(
    app: FastAPI,
    admin: Shopper,
    new_shopper: NewShopper,
    open_browser: OpenBrowser,
    gateway: FakeGateway,
    how: str,
) -> None:
    shopper: Shopper = await new_shopper()
    mug, cup = await add_product(admin, "mug"), await add_product(admin, "cup")
    buyer = browser_of(shopper)
    await add_to_cart(buyer, mug, 2)
    await add_to_cart(buyer, cup, 1)
    form = await buyer.form("/checkout", "/checkout")
    credentials = {"email": shopper.email, "password": shopper.password}

    if how == "logged out from another device":
        phone = open_browser()
        await browser_of_logged_in(phone, credentials)
        await phone.get("/sessions")
        ended = await phone.post("/sessions/others")
        assert ended.status_code == 303
        assert "Logged out" in (flash((await phone.follow(ended)).text) or "")
        tab = buyer
    else:
        tab = open_browser()  # the same page, its cookie gone
    before = await ledger(app)

    placed = await tab.post("/checkout", {**form.fields, "card_number": OK_CARD})

    assert placed.status_code == 303, placed.text
    assert placed.headers["location"] == "/login?next=/checkout"
    login_page = await tab.follow(placed)
    message = flash(login_page.text) or ""
    assert "log in" in message and "cart is kept" in message, message
    if how == "logged out from another device":  # this browser's session did end
        assert "session has ended" in message, message
    login_form = form_in(login_page.text, "/login")
    assert login_form.fields["next"] == "/checkout"
    logged_in = await tab.post("/login", {**login_form.fields, **credentials})
    assert logged_in.status_code == 303, logged_in.text
    assert logged_in.headers["location"] == "/checkout"
    checkout = await tab.follow(logged_in)
    assert checkout.status_code == 200
    assert form_in(checkout.text, "/checkout").fields["cart"] == form.fields["cart"]
    assert await ledger(app) == before
    assert await paid_orders(shopper) == [] and gateway.charges == []
    assert await orders_of(app, shopper.user_id) == 0

    # and the page shown after logging in places the order, once
    again = form_in(checkout.text, "/checkout")
    placed = await tab.post("/checkout", {**again.fields, "card_number": OK_CARD})
    assert placed.status_code == 303, placed.text
    assert [total for _, _, total in await paid_orders(shopper)] == [2 * 1000 + 1000]
    assert len(gateway.charges) == 1


async def browser_of_logged_in(browser: Browser, credentials: dict[str, str]) -> None:
    response = await browser.submit("/login", "/login", credentials)
    assert response.status_code == 303, response.text
    await browser.follow(response)


# --- 6. the cart changed in another tab ---------------------------------------------------


@pytest.mark.parametrize("change", ["added a product", "changed a quantity", "removed a line"])
async def test_a_cart_changed_in_another_tab_is_shown_again_not_ordered(
    app: FastAPI,
    admin: Shopper,
    new_shopper: NewShopper,
    gateway: FakeGateway,
    change: str,
) -> None:
    shopper: Shopper = await new_shopper()
    mug, cup = await add_product(admin, "mug"), await add_product(admin, "cup")
    buyer = browser_of(shopper)
    await add_to_cart(buyer, mug, 1)
    await add_to_cart(buyer, cup, 1)
    form = await buyer.form("/checkout", "/checkout")
    assert form.fields["cart"] == f"{mug}:1,{cup}:1"

    other_tab = Browser(buyer.client, buyer.csrf)  # the same cookie jar
    if change == "added a product":
        changed = await other_tab.post("/cart/items", {"product_id": str(mug), "quantity": "1"})
        now = f"{mug}:2,{cup}:1"
    elif change == "changed a quantity":
        changed = await other_tab.post(f"/cart/items/{cup}", {"quantity": "4"})
        now = f"{mug}:1,{cup}:4"
    else:
        changed = await other_tab.post(f"/cart/items/{cup}/remove")
        now = f"{mug}:1"
    assert changed.status_code == 303, changed.text
    before = await ledger(app)

    placed = await buyer.post("/checkout", {**form.fields, "card_number": OK_CARD})

    assert placed.status_code == 409, placed.text
    assert is_html(placed)
    assert "changed" in (page_error(placed.text) or ""), placed.text
    again = form_in(placed.text, "/checkout")
    assert again.fields["cart"] == now
    assert again.fields["checkout_key"] != form.fields["checkout_key"]
    assert await ledger(app) == before
    assert await paid_orders(shopper) == [] and gateway.charges == []
    assert await orders_of(app, shopper.user_id) == 0


# --- 7. CSRF and forms from other sites ----------------------------------------------------


async def test_a_post_without_its_csrf_token_is_a_403_page_and_changes_nothing(
    app: FastAPI,
    admin: Shopper,
    new_shopper: NewShopper,
    open_browser: OpenBrowser,
    gateway: FakeGateway,
) -> None:
    shopper: Shopper = await new_shopper()
    payee: Shopper = await new_shopper()
    mug = await add_product(admin, "mug", price=1000, stock=5)
    assert (await deposit(shopper, 5000)).status_code == 201
    buyer = browser_of(shopper)
    await add_to_cart(buyer, mug, 2)
    checkout = await buyer.form("/checkout", "/checkout")
    deposit_form = await buyer.form("/account", "/account/deposits")
    transfer_form = await buyer.form("/account", "/account/transfers")
    # a second session of the shopper, for "log out other devices" to end
    credentials = {"email": shopper.email, "password": shopper.password}
    await browser_of_logged_in(open_browser(), credentials)
    admin_browser = browser_of(admin)
    charged = len(gateway.charges)

    def without_token(fields: dict[str, str]) -> dict[str, str]:
        return {name: value for name, value in fields.items() if name != "csrf_token"}

    posts: list[tuple[Browser, str, dict[str, str]]] = [
        (buyer, "/cart/items", {"product_id": str(mug), "quantity": "1", "next": "/"}),
        (buyer, f"/cart/items/{mug}", {"quantity": "5"}),
        (buyer, f"/cart/items/{mug}/remove", {}),
        (buyer, "/checkout", without_token({**checkout.fields, "card_number": OK_CARD})),
        (
            buyer,
            "/checkout",
            without_token(
                {**checkout.fields, "method": "account", "account_id": str(shopper.account_id)}
            ),
        ),
        (buyer, "/account/deposits", without_token({**deposit_form.fields, "amount": "10.00"})),
        (
            buyer,
            "/account/transfers",
            without_token(
                {**transfer_form.fields, "to_account_id": str(payee.account_id), "amount": "5"}
            ),
        ),
        (buyer, "/sessions/others", {}),
        (buyer, "/logout", {}),
        (buyer, "/login", {"email": payee.email, "password": payee.password}),
        (buyer, "/signup", {"name": "Eve", "email": "eve@example.com", "password": "a password"}),
        (
            admin_browser,
            "/admin/products",
            {"sku": "new", "name": "New", "price": "1.00", "stock": "1"},
        ),
        (admin_browser, f"/admin/products/{mug}", {"price": "0.01", "stock": "100"}),
    ]

    async def state() -> object:
        return (
            await ledger(app),
            await buyer.cart(),
            (await shopper.get("/api/session")).json()["order_ids"],
            len((await shopper.get("/api/sessions")).json()),
            (await admin.get("/api/session")).status_code,
        )

    before = await state()
    for browser, url, fields in posts:
        for token in (None, "not-the-token"):
            sent = fields if token is None else {**fields, "csrf_token": token}
            response = await browser.post(url, sent, csrf=False)
            assert response.status_code == 403, (url, token, response.status_code, response.text)
            assert is_html(response), (url, response.headers.get("content-type"))
            # said to a person: no header name of the API's
            error = page_error(response.text) or ""
            assert "security token" in error and "X-CSRF" not in error, (url, response.text)
            assert "set-cookie" not in response.headers, url
    assert await state() == before
    assert len(gateway.charges) == charged


@pytest.mark.parametrize(
    "headers",
    [
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
        {"Sec-Fetch-Site": "", "Origin": "https://evil.example"},
        {"Sec-Fetch-Site": "", "Origin": "http://shop.test.evil.example"},
    ],
    ids=["cross-site", "same-site", "foreign-origin", "look-alike-origin"],
)
async def test_a_form_posted_from_another_site_is_refused_even_for_a_guest(
    app: FastAPI,
    admin: Shopper,
    new_shopper: NewShopper,
    open_browser: OpenBrowser,
    gateway: FakeGateway,
    headers: dict[str, str],
) -> None:
    shopper: Shopper = await new_shopper()
    mug = await add_product(admin, "mug", price=1000, stock=5)
    guest = open_browser()  # no session at all: no CSRF token protects it
    credentials = {"email": shopper.email, "password": shopper.password}
    posts = [
        ("/login", credentials),
        ("/signup", {"name": "Eve", "email": "eve@example.com", "password": "a password"}),
        ("/cart/items", {"product_id": str(mug), "quantity": "1"}),
        ("/checkout", {"cart": f"{mug}:1", "method": "card", "card_number": OK_CARD}),
        ("/logout", {}),
    ]
    before = await ledger(app)
    for url, fields in posts:
        response = await guest.post(url, fields, headers=headers)
        assert response.status_code == 403, (url, response.status_code, response.text)
        assert is_html(response) and "another site" in (page_error(response.text) or "")
        assert "set-cookie" not in response.headers, url
    assert guest.cookie is None

    # A logged-in customer's form, with its valid token, from another site: refused too.
    buyer = browser_of(shopper)
    await add_to_cart(buyer, mug, 1)
    form = await buyer.form("/checkout", "/checkout")
    placed = await buyer.post("/checkout", {**form.fields, "card_number": OK_CARD}, headers=headers)
    assert placed.status_code == 403 and is_html(placed)
    logout = await buyer.post("/logout", headers=headers)
    assert logout.status_code == 403
    assert await ledger(app) == before and gateway.charges == []
    assert await buyer.cart() == {"mug": 1}
    assert (await shopper.get("/api/session")).status_code == 200


# --- 8. paying from an account ------------------------------------------------------------


async def test_paying_from_an_account_short_of_funds_then_after_a_deposit(
    app: FastAPI, admin: Shopper, new_shopper: NewShopper, gateway: FakeGateway
) -> None:
    shopper: Shopper = await new_shopper()
    mug = await add_product(admin, "mug", price=1250, stock=5)
    buyer = browser_of(shopper)
    await add_to_cart(buyer, mug, 2)
    form = await buyer.form("/checkout", "/checkout")
    account = {"method": "account", "account_id": str(shopper.account_id)}
    assert form.options["account_id"] == [str(shopper.account_id)]
    before = await ledger(app)

    short = await buyer.post("/checkout", {**form.fields, **account})

    assert short.status_code == 402, short.text
    assert is_html(short)
    assert "Insufficient funds" in (error_at(short.text, "account_id") or ""), short.text
    again = form_in(short.text, "/checkout")
    assert again.fields["method"] == "account"  # the page keeps the choice
    assert await ledger(app) == before
    assert await paid_orders(shopper) == [] and await buyer.cart() == {"mug": 2}

    refused = await buyer.submit(
        "/account", "/account/deposits", {"amount": "50.00", "card_number": DECLINED}
    )
    assert refused.status_code == 402, refused.text
    assert "Your card was declined." in (error_at(refused.text, "card_number") or "")
    assert "card_declined" not in refused.text and DECLINED not in refused.text
    refill = form_in(refused.text, "/account/deposits")
    assert refill.fields["amount"] == "50.00" and refill.fields.get("card_number", "") == ""
    assert await balance(shopper) == 0 and gateway.total_charged == 0

    deposited = await buyer.post("/account/deposits", {**refill.fields, "card_number": OK_CARD})
    assert deposited.status_code == 303, deposited.text
    assert "€50.00" in (flash((await buyer.follow(deposited)).text) or "")
    assert await balance(shopper) == 5000
    assert gateway.total_charged == 5000

    paid = await buyer.post("/checkout", {**again.fields, **account})
    assert paid.status_code == 303, paid.text
    [(order_id, _, total)] = await paid_orders(shopper)
    assert paid.headers["location"] == f"/orders/{order_id}" and total == 2500
    assert await balance(shopper) == 2500
    assert gateway.total_charged == 5000  # nothing charged to a card for it


# --- 9. the administrator's products page ---------------------------------------------------


async def test_the_admin_products_page(
    app: FastAPI, admin: Shopper, new_shopper: NewShopper, open_browser: OpenBrowser
) -> None:
    admin_browser = browser_of(admin)
    added = await admin_browser.submit(
        "/admin/products",
        "/admin/products",
        {"sku": "lamp", "name": "Desk lamp", "price": "13.5", "stock": "7"},
    )
    assert added.status_code == 303, added.text
    assert "Desk lamp" in (flash((await admin_browser.follow(added)).text) or "")
    [lamp] = (await admin.get("/api/products")).json()
    assert (lamp["sku"], lamp["price"], lamp["stock"]) == ("lamp", 1350, 7)

    cheaper = await admin_browser.submit(
        "/admin/products", f"/admin/products/{lamp['id']}", {"price": "9"}
    )
    assert cheaper.status_code == 303, cheaper.text
    dearer = await admin_browser.submit(
        "/admin/products", f"/admin/products/{lamp['id']}", {"price": "13.5", "stock": "3"}
    )
    assert dearer.status_code == 303, dearer.text
    [lamp] = (await admin.get("/api/products")).json()
    assert (lamp["price"], lamp["stock"]) == (1350, 3)

    customer = browser_of(await new_shopper())
    before = await ledger(app)
    forbidden = await customer.get("/admin/products")
    assert forbidden.status_code == 403 and is_html(forbidden), forbidden.text
    assert page_error(forbidden.text)
    await customer.get("/")
    for url in ("/admin/products", f"/admin/products/{lamp['id']}"):
        refused = await customer.post(
            url, {"sku": "x", "name": "X", "price": "0.01", "stock": "999"}
        )
        assert refused.status_code == 403 and is_html(refused), (url, refused.text)

    again = await admin_browser.submit(
        "/admin/products",
        "/admin/products",
        {"sku": "lamp", "name": "Another lamp", "price": "1", "stock": "1"},
    )
    assert again.status_code == 409 and is_html(again), again.text  # the page, with its error
    assert "already exists" in again.text and "Desk lamp" in again.text
    assert [p["name"] for p in (await admin.get("/api/products")).json()] == ["Desk lamp"]

    guest = open_browser()
    to_login = await guest.get("/admin/products")
    assert to_login.status_code == 303
    assert to_login.headers["location"] == "/login?next=/admin/products"
    assert await ledger(app) == before


# --- 10. more than the stock -------------------------------------------------------------


@pytest.mark.parametrize("method", ["card", "account"])
async def test_ordering_more_than_the_stock_names_the_product_and_changes_nothing(
    app: FastAPI, admin: Shopper, new_shopper: NewShopper, gateway: FakeGateway, method: str
) -> None:
    shopper: Shopper = await new_shopper()
    response = await admin.post(
        "/api/products", {"sku": "mug", "name": "Enamel mug", "price": 1000, "stock": 2}
    )
    assert response.status_code == 201
    mug = response.json()["id"]
    cup = await add_product(admin, "cup", price=100, stock=50)
    assert (await deposit(shopper, 10_000)).status_code == 201
    charged = len(gateway.charges)
    buyer = browser_of(shopper)
    await add_to_cart(buyer, cup, 1)
    await add_to_cart(buyer, mug, 3)
    form = await buyer.form("/checkout", "/checkout")
    payment = (
        {"card_number": OK_CARD}
        if method == "card"
        else {"method": "account", "account_id": str(shopper.account_id)}
    )
    before = await ledger(app)

    placed = await buyer.post("/checkout", {**form.fields, **payment})

    assert placed.status_code == 409, placed.text
    assert is_html(placed)
    assert "Enamel mug" in (page_error(placed.text) or ""), placed.text
    assert await ledger(app) == before
    assert len(gateway.charges) == charged
    assert await paid_orders(shopper) == []
    assert await buyer.cart() == {"cup": 1, "mug": 3}


# --- 11. no open redirect after logging in --------------------------------------------------

ELSEWHERE = [
    "//evil.example",
    "https://evil.example",
    "https://evil.example/",
    "///evil.example",
    "/\\evil.example",
    "\\\\evil.example",
    "javascript:alert(1)",
]


@pytest.mark.parametrize("target", ELSEWHERE)
async def test_logging_in_never_sends_the_browser_to_another_site(
    app: FastAPI, new_shopper: NewShopper, open_browser: OpenBrowser, target: str
) -> None:
    shopper: Shopper = await new_shopper()
    credentials = {"email": shopper.email, "password": shopper.password}
    browser = open_browser()
    page = await browser.get(f"/login?next={quote(target, safe='')}")
    assert page.status_code == 200
    form = form_in(page.text, "/login")
    assert form.fields["next"] == "/"
    logged_in = await browser.post("/login", {**form.fields, **credentials})
    assert logged_in.status_code == 303, logged_in.text
    assert logged_in.headers["location"] == "/"

    # The same, the next field posted as is (a form made elsewhere, or edited)
    other = open_browser()
    crafted = await other.post("/login", {**credentials, "next": target})
    assert crafted.status_code == 303, crafted.text
    assert crafted.headers["location"] == "/"


@pytest.mark.parametrize(
    "target", ["/\t/evil.example", "/\n/evil.example", "/%2F/evil.example", "/%5Cevil.example"]
)
async def test_a_next_a_browser_could_read_as_another_site_stays_on_this_one(
    app: FastAPI, new_shopper: NewShopper, open_browser: OpenBrowser, target: str
) -> None:
    shopper: Shopper = await new_shopper()
    browser = open_browser()
    logged_in = await browser.post(
        "/login", {"email": shopper.email, "password": shopper.password, "next": target}
    )
    assert logged_in.status_code == 303, logged_in.text
    location = logged_in.headers["location"]
    assert lands_on_this_site(location), location
