"""What a customer does in the storefront, one step a method, each page it shows photographed.

The locators are the ones a person (or a screen reader) uses: roles, labels, link and button
names; ``data-testid`` only for values that have no role of their own (prices, counts).
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
from playwright.sync_api import Locator, Page, Response, expect

GOOD_CARD = "4242424242424242"
DECLINED_CARD = "4000000000000002"

#: the demo catalogue (`shop seed --demo`): SKU -> (name, price in cents)
PRODUCTS = {
    "MUG-001": ("Enamel mug", 1250),
    "TEE-001": ("Cotton T-shirt", 2400),
    "CAP-001": ("Canvas cap", 1800),
    "PEN-001": ("Fountain pen", 4500),
    "BAG-001": ("Tote bag", 1500),
}


@dataclass(frozen=True)
class Shop:
    """The server under test and its card simulator."""

    url: str
    gateway_url: str
    server_log: Path

    def charges(self) -> list[dict[str, Any]]:
        """Every charge the card simulator made, in order."""
        response = httpx.get(f"{self.gateway_url}/v1/charges", timeout=10)
        response.raise_for_status()
        charges: list[dict[str, Any]] = response.json()
        return charges


class Snap(Protocol):
    def __call__(self, page: Page, name: str) -> Path: ...


class OpenShopper(Protocol):
    def __call__(self, **context_options: Any) -> Shopper: ...


@dataclass(frozen=True)
class Customer:
    name: str
    email: str
    password: str


#: the administrator `shop serve` creates from SHOP_ADMIN_EMAIL and SHOP_ADMIN_PASSWORD
ADMIN = Customer("Administrator", "admin@example.com", "admin-password-123")


def new_customer(first_name: str = "Ada") -> Customer:
    """A customer nobody else uses: the tests share one server."""
    token = uuid.uuid4().hex[:10]
    return Customer(
        f"{first_name} {token[:4]}",
        f"{first_name.lower()}-{token}@example.com",
        f"pw-{token}-secret",
    )


def double_click(button: Locator) -> None:
    """Two clicks on ``button``, the second once the first one's request has left.

    That is an impatient double click on a slow form. Playwright's own ``dblclick`` sometimes
    lets Chromium fold the two submissions into one, and its ``click`` waits for the
    navigation it started, so the mouse is driven directly.
    """
    page = button.page
    button.scroll_into_view_if_needed()
    box = button.bounding_box()
    assert box is not None
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    with page.expect_request(lambda request: request.method == "POST"):
        page.mouse.click(x, y)
    page.mouse.click(x, y)


def without_browser_validation(form: Locator) -> None:
    """Let ``form`` send what its inputs' types (email, number) would refuse: the server must
    refuse it itself. Needs JavaScript on."""
    form.evaluate(
        """form => {
            form.noValidate = true;
            for (const input of form.querySelectorAll("input[type=email], input[type=number]"))
                input.type = "text";
        }"""
    )


def euros(cents: int) -> str:
    return f"€{cents // 100}.{cents % 100:02d}"


def name_of(sku: str) -> str:
    return PRODUCTS[sku][0]


def number_in(text: str) -> int:
    """7 for "7 in stock", 0 for "Sold out"."""
    found = re.search(r"\d+", text)
    return int(found.group()) if found else 0


class Shopper:
    """One browser tab."""

    def __init__(self, page: Page, snap: Snap, base_url: str) -> None:
        self.page = page
        self.snap = snap
        self.base_url = base_url

    # --- what every page has -------------------------------------------------------------

    @property
    def nav(self) -> Locator:
        return self.page.get_by_role("navigation", name="Main")

    @property
    def heading(self) -> Locator:
        return self.page.get_by_role("heading", level=1)

    @property
    def flash(self) -> Locator:
        return self.page.get_by_role("status").and_(self.page.get_by_test_id("flash"))

    @property
    def error(self) -> Locator:
        return self.page.get_by_role("alert").and_(self.page.get_by_test_id("error"))

    @property
    def whoami(self) -> Locator:
        return self.page.get_by_test_id("whoami")

    @property
    def cart_count(self) -> Locator:
        return self.nav.get_by_test_id("cart-count")

    def nav_link(self, name: str) -> Locator:
        return self.nav.get_by_role("link", name=name)

    def new_tab(self) -> Shopper:
        """Another tab of the same browser context: same cookies, same session."""
        return Shopper(self.page.context.new_page(), self.snap, self.base_url)

    def url(self, path: str) -> str:
        return self.base_url + path

    def shot(self, name: str) -> Path:
        return self.snap(self.page, name)

    def visit(
        self, path: str, name: str | None = None, *, status: int | None = 200, shot: bool = True
    ) -> Response:
        """Open ``path`` (redirects followed); check the final status unless ``status=None``.
        ``shot=False`` when the caller photographs the page itself (once a form is filled)."""
        response = self.page.goto(path)
        assert response is not None
        if shot:
            self.shot(name or path.strip("/").replace("/", "-") or "catalogue")
        if status is not None:
            assert response.status == status, f"GET {path}: {response.status}, not {status}"
        return response

    def expect_every_form_has_a_csrf_token(self) -> None:
        without = self.page.locator("form:not(:has(input[type=hidden][name=csrf_token]))")
        expect(without, f"every form of {self.page.url} has its csrf_token").to_have_count(0)

    def items_in_cart(self) -> int:
        return number_in(self.cart_count.inner_text())

    # --- signing up, in and out ------------------------------------------------------------

    def sign_up(self, customer: Customer | None = None) -> Customer:
        """Sign up on the sign-up page (opened unless already there): logged in at once."""
        customer = customer or new_customer()
        if not self.page.url.startswith(self.url("/signup")):
            self.visit("/signup", shot=False)
        expect(self.heading).to_have_text("Create your account")
        self.page.get_by_label("Name").fill(customer.name)
        self.page.get_by_label("E-mail").fill(customer.email)
        self.page.get_by_label("Password").fill(customer.password)
        self.shot("sign-up")
        self.page.get_by_role("button", name="Sign up").click()
        expect(self.flash).to_contain_text(f"Welcome, {customer.name}! Your account is ready.")
        expect(self.page).to_have_url(self.url("/"))
        expect(self.whoami).to_contain_text(customer.name)
        self.shot("signed-up")
        return customer

    def log_in(self, customer: Customer) -> None:
        """Log in on the log-in page (opened unless already there)."""
        if not self.page.url.startswith(self.url("/login")):
            self.visit("/login", shot=False)
        expect(self.heading).to_have_text("Log in")
        self.page.get_by_label("E-mail").fill(customer.email)
        self.page.get_by_label("Password").fill(customer.password)
        self.shot("log-in")
        self.page.get_by_role("button", name="Log in", exact=True).click()
        expect(self.whoami).to_contain_text(customer.name)
        self.shot("logged-in")

    def log_out(self) -> None:
        self.page.get_by_role("button", name="Log out", exact=True).click()
        expect(self.flash).to_contain_text("You are logged out.")
        expect(self.page).to_have_url(self.url("/"))
        self.expect_logged_out()
        expect(self.cart_count).to_have_text("0")
        self.shot("logged-out")

    def expect_logged_out(self) -> None:
        """Nothing says who is logged in, nothing offers to log out. (Where the "Log in" and
        "Sign up" links are is checked once, by the test of the menu.)"""
        expect(self.whoami).to_have_count(0)
        expect(self.page.get_by_role("button", name="Log out", exact=True)).to_have_count(0)
        expect(self.nav_link("Orders")).to_have_count(0)

    # --- the catalogue ---------------------------------------------------------------------
    # --- the catalogue ---------------------------------------------------------------------

    def product(self, sku: str) -> Locator:
        return self.page.locator(f'article[data-testid="product"][data-sku="{sku}"]')

    def stock_of(self, sku: str) -> int:
        """The stock the catalogue shows (opened if need be)."""
        if self.page.url != self.url("/"):
            self.visit("/")
        return number_in(self.product(sku).get_by_test_id("stock").inner_text())

    def add_to_cart(self, sku: str) -> None:
        """One of ``sku`` from the catalogue."""
        if self.page.url != self.url("/"):
            self.visit("/")
        before = self.items_in_cart()
        self.product(sku).get_by_role("button", name="Add to cart").click()
        expect(self.flash).to_contain_text(f"Added {name_of(sku)} to your cart.")
        expect(self.page).to_have_url(self.url("/"))
        expect(self.cart_count).to_have_text(str(before + 1))
        self.shot(f"added-{sku}")

    def open_product(self, sku: str) -> None:
        if self.page.url != self.url("/"):
            self.visit("/")
        self.product(sku).get_by_role("link", name=name_of(sku)).click()
        expect(self.page).to_have_url(re.compile(r"/products/\d+$"))
        expect(self.heading).to_have_text(name_of(sku))
        expect(self.page.get_by_alt_text(name_of(sku))).to_be_visible()
        expect(self.page.get_by_test_id("price")).to_have_text(euros(PRODUCTS[sku][1]))
        expect(self.page.get_by_test_id("stock")).to_have_text(re.compile(r"\d+ in stock"))
        expect(self.page.get_by_label("Quantity")).to_have_value("1")
        self.shot(f"product-{sku}")

    # --- the cart --------------------------------------------------------------------------

    def cart_line(self, sku: str) -> Locator:
        return self.page.locator(f'[data-testid="cart-line"][data-sku="{sku}"]')

    def quantity_in_cart(self, sku: str) -> Locator:
        return self.cart_line(sku).get_by_label(f"Quantity of {name_of(sku)}")

    @property
    def cart_total(self) -> Locator:
        return self.page.get_by_test_id("cart-total")

    def open_cart(self) -> None:
        self.nav_link("Cart").click()
        expect(self.page).to_have_url(self.url("/cart"))
        expect(self.heading).to_have_text("Your cart")
        self.shot("cart")

    def change_quantity(self, sku: str, quantity: int) -> None:
        line = self.cart_line(sku)
        self.quantity_in_cart(sku).fill(str(quantity))
        line.get_by_role("button", name="Update").click()
        expect(self.page).to_have_url(self.url("/cart"))
        expect(self.quantity_in_cart(sku)).to_have_value(str(quantity))
        self.shot(f"cart-{sku}-{quantity}")

    def remove_from_cart(self, sku: str) -> None:
        self.cart_line(sku).get_by_role("button", name="Remove").click()
        expect(self.page).to_have_url(self.url("/cart"))
        expect(self.cart_line(sku)).to_have_count(0)
        self.shot(f"cart-without-{sku}")

    # --- checkout and orders ---------------------------------------------------------------

    def check_out(self) -> None:
        """From the cart page to the checkout page."""
        self.page.get_by_role("link", name="Check out").click()
        expect(self.page).to_have_url(self.url("/checkout"))
        expect(self.heading).to_have_text("Checkout")
        self.shot("checkout")

    def fill_card(self, card: str) -> None:
        self.page.get_by_role("radio", name="Card", exact=True).check()
        self.page.get_by_label("Card number").fill(card)

    @property
    def place_order_button(self) -> Locator:
        return self.page.get_by_role("button", name="Place order")

    def place_order(self, card: str = GOOD_CARD) -> int:
        """Pay by card on the checkout page; the id of the paid order."""
        self.fill_card(card)
        self.shot("checkout-filled")
        self.place_order_button.click()
        return self.expect_paid_order()

    def expect_paid_order(self, *, thanked: bool = True) -> int:
        expect(self.page).to_have_url(re.compile(r"/orders/\d+$"))
        if thanked:
            expect(self.flash).to_contain_text("Thank you! Your order is paid.")
        expect(self.page.get_by_test_id("order-status")).to_have_text("Paid")
        expect(self.cart_count).to_have_text("0")
        self.shot("order")
        found = re.search(r"/orders/(\d+)$", self.page.url)
        assert found is not None
        return int(found.group(1))

    def orders(self) -> Locator:
        """The order history, opened from the menu."""
        self.nav_link("Orders").click()
        expect(self.page).to_have_url(self.url("/orders"))
        expect(self.heading).to_have_text("Your orders")
        self.shot("orders")
        return self.page.get_by_test_id("order")
