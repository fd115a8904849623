"""The storefront in headless Chromium against a real `shop serve`: the journeys a customer
takes, each test with customers of its own (see conftest.py for the server and screenshots)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from playwright.sync_api import expect
from storefront import (
    DECLINED_CARD,
    GOOD_CARD,
    PRODUCTS,
    OpenShopper,
    Shop,
    Shopper,
    double_click,
    euros,
    new_customer,
)


def test_guest_fills_a_cart_signs_up_pays_by_card_and_finds_the_order(shopper: Shopper) -> None:
    page = shopper.page
    shopper.visit("/", "catalogue")
    expect(shopper.heading).to_have_text("Products")
    shopper.expect_logged_out()
    for sku, (name, cents) in PRODUCTS.items():
        product = shopper.product(sku)
        expect(product.get_by_role("link", name=name)).to_have_attribute(
            "href", re.compile(r"/products/\d+$")
        )
        expect(product.get_by_alt_text(name)).to_be_visible()
        expect(product.get_by_test_id("price")).to_have_text(euros(cents))
        expect(product.get_by_test_id("stock")).to_have_text(re.compile(r"\d+ in stock|Sold out"))
    mugs_in_stock = shopper.stock_of("MUG-001")

    shopper.add_to_cart("MUG-001")
    shopper.add_to_cart("MUG-001")
    shopper.add_to_cart("PEN-001")
    shopper.open_cart()
    expect(shopper.quantity_in_cart("MUG-001")).to_have_value("2")
    expect(shopper.cart_total).to_have_text("€70.00")

    page.get_by_role("link", name="Sign up", exact=True).click()
    customer = shopper.sign_up()
    expect(shopper.cart_count).to_have_text("3")
    shopper.open_cart()
    expect(shopper.cart_line("MUG-001")).to_contain_text("Enamel mug")
    expect(shopper.quantity_in_cart("MUG-001")).to_have_value("2")
    expect(shopper.quantity_in_cart("PEN-001")).to_have_value("1")
    expect(shopper.cart_total).to_have_text("€70.00")

    shopper.check_out()
    expect(page.get_by_test_id("checkout-total")).to_have_text("€70.00")
    expect(page.get_by_role("radio", name="Card", exact=True)).to_be_checked()
    expect(page.get_by_role("radio", name="Account", exact=True)).not_to_be_checked()
    expect(page.get_by_label("Card number")).to_have_value(GOOD_CARD)
    expect(page.get_by_label("Pay from account")).to_be_visible()
    order_id = shopper.place_order()
    expect(shopper.whoami).to_contain_text(customer.name)

    orders = shopper.orders()
    expect(orders).to_have_count(1)
    order = orders.first
    expect(order).to_contain_text(f"Order #{order_id}")
    expect(order).to_contain_text(str(datetime.now(UTC).year))
    expect(order).to_contain_text("Paid")
    expect(order).to_contain_text("Enamel mug")
    expect(order).to_contain_text("Fountain pen")
    expect(order).to_contain_text("€70.00")
    assert shopper.stock_of("MUG-001") == mugs_in_stock - 2


def test_the_cart_survives_a_reload_and_is_the_same_in_a_second_tab(shopper: Shopper) -> None:
    customer = shopper.sign_up()
    shopper.add_to_cart("TEE-001")
    shopper.open_cart()
    shopper.page.reload()
    shopper.shot("cart-reloaded")
    expect(shopper.quantity_in_cart("TEE-001")).to_have_value("1")
    expect(shopper.cart_total).to_have_text("€24.00")

    second = shopper.new_tab()
    second.visit("/cart", "second-tab-cart")
    expect(second.whoami).to_contain_text(customer.name)
    expect(second.quantity_in_cart("TEE-001")).to_have_value("1")
    second.change_quantity("TEE-001", 3)
    expect(second.cart_total).to_have_text("€72.00")

    shopper.page.reload()
    shopper.shot("first-tab-reloaded")
    expect(shopper.quantity_in_cart("TEE-001")).to_have_value("3")
    expect(shopper.cart_total).to_have_text("€72.00")
    expect(shopper.cart_count).to_have_text("3")

    shopper.remove_from_cart("TEE-001")
    expect(shopper.page.get_by_text("Your cart is empty.")).to_be_visible()
    second.page.reload()
    second.shot("second-tab-reloaded")
    expect(second.page.get_by_text("Your cart is empty.")).to_be_visible()
    expect(second.cart_count).to_have_text("0")


@pytest.mark.parametrize("javascript", [True, False], ids=["javascript-on", "javascript-off"])
def test_a_double_click_on_place_order_makes_one_order_and_one_charge(
    open_shopper: OpenShopper, shop: Shop, javascript: bool
) -> None:
    shopper = open_shopper(java_script_enabled=javascript)
    shopper.visit("/", "catalogue")
    shopper.sign_up()
    shopper.add_to_cart("BAG-001")
    shopper.open_cart()
    shopper.check_out()
    shopper.fill_card(GOOD_CARD)
    posts: list[str] = []
    shopper.page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
    charges_before = len(shop.charges())

    double_click(shopper.place_order_button)
    # Without JavaScript the page shown is the answer to the second submission: the server
    # must answer it with the order the first one made.
    shopper.expect_paid_order(thanked=javascript)

    expect(shopper.orders()).to_have_count(1)
    new_charges = shop.charges()[charges_before:]
    assert [charge["amount"] for charge in new_charges] == [1500]
    if javascript:
        assert len(posts) == 1, f"the button was not disabled once pressed: {posts}"
    else:
        assert len(posts) == 2, f"the browser was to submit twice, it sent {posts}"


def test_a_declined_card_keeps_the_cart_and_a_good_card_then_pays(shopper: Shopper) -> None:
    page = shopper.page
    shopper.visit("/", "catalogue")
    shopper.sign_up()
    shopper.add_to_cart("CAP-001")
    shopper.open_cart()
    shopper.check_out()
    shopper.fill_card(DECLINED_CARD)
    shopper.place_order_button.click()

    expect(page).to_have_url(shopper.url("/checkout"))
    expect(shopper.heading).to_have_text("Checkout")
    declined = re.compile("declined", re.IGNORECASE)
    expect(page.get_by_test_id("card_number-error")).to_contain_text(declined)
    expect(page.get_by_label("Card number")).to_have_accessible_description(declined)
    expect(page.get_by_test_id("checkout-total")).to_have_text("€18.00")
    expect(shopper.cart_count).to_have_text("1")
    shopper.shot("declined")

    expect(shopper.orders()).to_have_count(0)
    expect(page.get_by_text("No orders yet.")).to_be_visible()
    shopper.open_cart()
    expect(shopper.quantity_in_cart("CAP-001")).to_have_value("1")
    shopper.check_out()
    shopper.place_order(GOOD_CARD)
    expect(shopper.orders()).to_have_count(1)


def test_log_out_other_devices_ends_the_session_of_the_other_browser(
    open_shopper: OpenShopper,
) -> None:
    laptop = open_shopper()
    laptop.visit("/", "laptop-catalogue")
    customer = laptop.sign_up()
    phone = open_shopper()
    phone.visit("/", "phone-catalogue")
    phone.log_in(customer)

    laptop.nav_link("Sessions").click()
    expect(laptop.heading).to_have_text(re.compile(r"Where you.re logged in"))
    sessions = laptop.page.get_by_test_id("session")
    expect(sessions).to_have_count(2)
    expect(sessions.filter(has_text="This device")).to_have_count(1)
    laptop.shot("sessions")
    laptop.page.get_by_role("button", name="Log out other devices").click()
    expect(laptop.flash).to_contain_text("Logged out 1 other")
    expect(sessions).to_have_count(1)
    expect(sessions).to_contain_text("This device")
    laptop.shot("sessions-after")

    phone.page.reload()
    phone.shot("phone-reloaded")
    phone.expect_logged_out()
    expect(phone.page.get_by_role("link", name="Log in", exact=True)).to_be_visible()
    phone.visit("/account", "phone-account")
    expect(phone.page).to_have_url(re.compile(re.escape(phone.url("/login"))))
    expect(phone.heading).to_have_text("Log in")

    laptop.page.reload()
    expect(laptop.whoami).to_contain_text(customer.name)


def test_after_logging_out_the_next_customer_does_not_see_the_cart(
    shopper: Shopper, open_shopper: OpenShopper
) -> None:
    elsewhere = open_shopper()
    elsewhere.visit("/", "bob-catalogue")
    bob = elsewhere.sign_up(new_customer("Bob"))

    shopper.visit("/", "catalogue")
    shopper.sign_up(new_customer("Ada"))
    shopper.add_to_cart("MUG-001")
    shopper.add_to_cart("TEE-001")
    shopper.log_out()
    shopper.open_cart()
    expect(shopper.page.get_by_text("Your cart is empty.")).to_be_visible()

    shopper.log_in(bob)
    expect(shopper.cart_count).to_have_text("0")
    shopper.open_cart()
    expect(shopper.page.get_by_text("Your cart is empty.")).to_be_visible()
    expect(shopper.page.get_by_test_id("cart-line")).to_have_count(0)
    expect(shopper.page.get_by_text("Enamel mug")).to_have_count(0)


def test_a_form_without_its_csrf_token_is_refused_and_changes_nothing(
    shopper: Shopper, shop: Shop
) -> None:
    page = shopper.page
    for path in ("/", "/login", "/signup"):
        shopper.visit(path)
        shopper.expect_every_form_has_a_csrf_token()
    shopper.sign_up()
    shopper.add_to_cart("MUG-001")
    shopper.open_product("MUG-001")
    shopper.expect_every_form_has_a_csrf_token()
    for path in ("/", "/cart", "/checkout", "/account", "/sessions"):
        shopper.visit(path)
        shopper.expect_every_form_has_a_csrf_token()

    shopper.visit("/", "catalogue-again")
    tee = shopper.product("TEE-001")
    tee.locator("input[name=csrf_token]").evaluate("input => input.remove()")
    with page.expect_response(lambda r: r.request.method == "POST") as refused:
        tee.get_by_role("button", name="Add to cart").click()
    assert refused.value.status == 403
    assert refused.value.headers["content-type"].startswith("text/html")
    expect(shopper.heading).to_contain_text("could not be accepted")
    shopper.shot("refused")
    shopper.visit("/", "catalogue-after")
    expect(shopper.cart_count).to_have_text("1")

    # The same for the form that takes money.
    shopper.open_cart()
    expect(shopper.cart_line("TEE-001")).to_have_count(0)
    shopper.check_out()
    checkout = page.locator("form", has=shopper.place_order_button)
    checkout.locator("input[name=csrf_token]").evaluate("input => input.remove()")
    charges_before = len(shop.charges())
    with page.expect_response(lambda r: r.request.method == "POST") as refused:
        shopper.place_order_button.click()
    assert refused.value.status == 403
    expect(shopper.heading).to_contain_text("could not be accepted")
    shopper.shot("checkout-refused")
    assert len(shop.charges()) == charges_before
    shopper.visit("/orders", "orders-after")
    expect(shopper.page.get_by_test_id("order")).to_have_count(0)
    expect(shopper.cart_count).to_have_text("1")


def test_without_javascript_a_customer_signs_up_orders_and_pays(
    open_shopper: OpenShopper,
) -> None:
    shopper = open_shopper(java_script_enabled=False)
    page = shopper.page
    shopper.visit("/", "catalogue")
    shopper.sign_up()
    tees_in_stock = shopper.stock_of("TEE-001")

    shopper.open_product("TEE-001")
    expect(shopper.page.get_by_test_id("price")).to_have_text("€24.00")
    page.get_by_label("Quantity").fill("2")
    page.get_by_role("button", name="Add to cart").click()
    expect(shopper.flash).to_contain_text(re.compile(r"Added .*Cotton T-shirt.* to your cart"))
    expect(shopper.cart_count).to_have_text("2")
    shopper.shot("added")

    shopper.open_cart()
    expect(shopper.quantity_in_cart("TEE-001")).to_have_value("2")
    expect(shopper.cart_total).to_have_text("€48.00")
    shopper.check_out()
    order_id = shopper.place_order()

    orders = shopper.orders()
    expect(orders).to_have_count(1)
    expect(orders).to_contain_text(f"Order #{order_id}")
    expect(orders).to_contain_text("Cotton T-shirt")
    expect(orders).to_contain_text("€48.00")
    assert shopper.stock_of("TEE-001") == tees_in_stock - 2
