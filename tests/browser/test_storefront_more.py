"""The storefront's edges in headless Chromium: the menu, a guest or an ended session at
checkout, money in an account, the admin pages, error pages, a phone's width, the keyboard."""

from __future__ import annotations

import re
import uuid

from playwright.sync_api import expect
from storefront import (
    ADMIN,
    GOOD_CARD,
    OpenShopper,
    Shop,
    Shopper,
    new_customer,
    without_browser_validation,
)

PHONE = {"width": 375, "height": 740}


def test_the_main_menu_follows_who_is_logged_in(open_shopper: OpenShopper) -> None:
    shopper = open_shopper()
    shopper.visit("/", "guest-catalogue")
    for link in ("Shop", "Cart", "Log in", "Sign up"):
        expect(shopper.nav_link(link), f'the menu has "{link}" for a guest').to_be_visible()
    for link in ("Orders", "Account", "Sessions", "Admin"):
        expect(shopper.nav_link(link), f'no "{link}" for a guest').to_have_count(0)
    expect(shopper.nav_link("Cart")).to_contain_text("0")
    expect(shopper.cart_count).to_have_text("0")

    shopper.nav_link("Sign up").click()
    expect(shopper.page).to_have_url(shopper.url("/signup"))
    customer = shopper.sign_up()
    expect(shopper.whoami).to_contain_text(customer.name)
    expect(shopper.page.get_by_role("button", name="Log out", exact=True)).to_be_visible()
    for link in ("Shop", "Cart", "Orders", "Account", "Sessions"):
        expect(shopper.nav_link(link), f'the menu has "{link}" for a customer').to_be_visible()
    for link in ("Log in", "Sign up", "Admin"):
        expect(shopper.nav_link(link), f'no "{link}" for a customer').to_have_count(0)
    shopper.add_to_cart("MUG-001")
    expect(shopper.nav_link("Cart")).to_contain_text("1")

    shopper.log_out()
    expect(shopper.nav_link("Log in")).to_be_visible()
    shopper.nav_link("Log in").click()
    expect(shopper.page).to_have_url(re.compile(re.escape(shopper.url("/login"))))
    shopper.log_in(ADMIN)
    expect(shopper.nav_link("Admin"), 'the menu has "Admin" for an admin').to_be_visible()


def test_a_guest_checking_out_logs_in_and_comes_back_to_checkout(
    open_shopper: OpenShopper,
) -> None:
    elsewhere = open_shopper()
    elsewhere.visit("/", "signing-up-elsewhere")
    customer = elsewhere.sign_up()

    guest = open_shopper()
    guest.visit("/", "catalogue")
    guest.add_to_cart("BAG-001")
    guest.open_cart()
    guest.page.get_by_role("link", name="Check out").click()
    expect(guest.page).to_have_url(guest.url("/login?next=/checkout"))
    guest.shot("asked-to-log-in")
    guest.log_in(customer)
    expect(guest.page).to_have_url(guest.url("/checkout"))
    expect(guest.heading).to_have_text("Checkout")
    expect(guest.page.get_by_test_id("checkout-total")).to_have_text("€15.00")
    guest.shot("checkout")
    guest.place_order()


def test_a_session_ended_elsewhere_at_checkout_keeps_the_cart(
    open_shopper: OpenShopper, shop: Shop
) -> None:
    laptop = open_shopper()
    laptop.visit("/", "laptop-catalogue")
    customer = laptop.sign_up()
    laptop.add_to_cart("MUG-001")
    laptop.add_to_cart("CAP-001")
    laptop.open_cart()
    laptop.check_out()
    laptop.fill_card(GOOD_CARD)

    phone = open_shopper()
    phone.visit("/", "phone-catalogue")
    phone.log_in(customer)
    phone.nav_link("Sessions").click()
    phone.page.get_by_role("button", name="Log out other devices").click()
    expect(phone.flash).to_contain_text("Logged out 1 other")
    phone.shot("phone-logged-out-the-laptop")

    charges_before = len(shop.charges())
    laptop.place_order_button.click()
    expect(laptop.page).to_have_url(re.compile(re.escape(laptop.url("/login"))))
    expect(
        laptop.flash.or_(laptop.error).filter(has_text=re.compile("log in", re.IGNORECASE))
    ).to_be_visible()
    laptop.shot("asked-to-log-in")
    assert len(shop.charges()) == charges_before

    laptop.log_in(customer)
    expect(laptop.page).to_have_url(laptop.url("/checkout"))
    expect(laptop.heading).to_have_text("Checkout")
    expect(laptop.page.get_by_test_id("checkout-total")).to_have_text("€30.50")
    expect(laptop.page.get_by_text("Enamel mug")).to_be_visible()
    expect(laptop.page.get_by_text("Canvas cap")).to_be_visible()
    laptop.shot("checkout-again")
    laptop.place_order()
    expect(laptop.orders()).to_have_count(1)


def test_deposit_in_euros_and_invalid_amounts_change_nothing(shopper: Shopper) -> None:
    page = shopper.page
    shopper.visit("/", "catalogue")
    shopper.sign_up()
    shopper.nav_link("Account").click()
    expect(shopper.heading).to_have_text("Your account")
    balance = page.get_by_test_id("account").first.get_by_test_id("balance")
    expect(balance).to_have_text("€0.00")
    shopper.shot("account")

    deposit = page.locator("form", has=page.get_by_role("button", name="Deposit"))
    expect(deposit.get_by_label("Deposit to")).to_be_visible()
    deposit.get_by_label("Amount").fill("50.00")
    deposit.get_by_label("Card number").fill(GOOD_CARD)
    deposit.get_by_role("button", name="Deposit").click()
    expect(shopper.flash).to_contain_text("Deposited €50.00")
    expect(balance).to_have_text("€50.00")
    shopper.shot("deposited")

    for amount in ("abc", "0", "1.234"):
        deposit = page.locator("form", has=page.get_by_role("button", name="Deposit"))
        without_browser_validation(deposit)
        deposit.get_by_label("Amount").fill(amount)
        deposit.get_by_label("Card number").fill(GOOD_CARD)
        deposit.get_by_role("button", name="Deposit").click()
        expect(page.get_by_test_id("amount-error")).to_be_visible()
        error = page.get_by_test_id("amount-error").inner_text()
        expect(deposit.get_by_label("Amount")).to_have_accessible_description(error)
        expect(deposit.get_by_label("Amount")).to_have_value(amount)  # as it was typed
        shopper.shot(f"amount-{amount}-refused")
        shopper.visit("/account", f"account-after-{amount}")
        expect(balance).to_have_text("€50.00")


def test_paying_from_the_account_takes_the_balance_and_charges_no_card(
    shopper: Shopper, shop: Shop
) -> None:
    page = shopper.page
    shopper.visit("/", "catalogue")
    shopper.sign_up()
    shopper.visit("/account")
    deposit = page.locator("form", has=page.get_by_role("button", name="Deposit"))
    deposit.get_by_label("Amount").fill("20.00")
    deposit.get_by_label("Card number").fill(GOOD_CARD)
    deposit.get_by_role("button", name="Deposit").click()
    expect(shopper.flash).to_contain_text("Deposited €20.00")

    shopper.add_to_cart("MUG-001")
    shopper.open_cart()
    shopper.check_out()
    page.get_by_role("radio", name="Account", exact=True).check()
    expect(page.get_by_label("Pay from account")).to_contain_text("€20.00")
    shopper.shot("pay-from-account")
    charges_before = len(shop.charges())
    shopper.place_order_button.click()
    shopper.expect_paid_order()
    assert len(shop.charges()) == charges_before
    shopper.nav_link("Account").click()
    expect(page.get_by_test_id("account").first.get_by_test_id("balance")).to_have_text("€7.50")
    shopper.shot("account-after")


def test_a_transfer_moves_money_to_another_customers_account(
    shopper: Shopper, open_shopper: OpenShopper
) -> None:
    payee = open_shopper()
    payee.visit("/", "payee-catalogue")
    payee.sign_up(new_customer("Bob"))
    payee.nav_link("Account").click()
    payee_account = payee.page.get_by_test_id("account").first
    payee.shot("payee-account")
    shown = re.search(r"#\s*(\d+)", payee_account.inner_text())
    assert shown is not None, "the account's number is not shown"
    number = shown.group(1)

    page = shopper.page
    shopper.visit("/", "catalogue")
    shopper.sign_up()
    shopper.visit("/account")
    deposit = page.locator("form", has=page.get_by_role("button", name="Deposit"))
    deposit.get_by_label("Amount").fill("20.00")
    deposit.get_by_label("Card number").fill(GOOD_CARD)
    deposit.get_by_role("button", name="Deposit").click()
    expect(shopper.flash).to_contain_text("Deposited €20.00")

    transfer = page.locator("form", has=page.get_by_role("button", name="Transfer"))
    expect(transfer.get_by_label("From account")).to_be_visible()
    transfer.get_by_label("To account").fill(number)
    transfer.get_by_label("Amount").fill("7.25")
    shopper.shot("transfer")
    transfer.get_by_role("button", name="Transfer").click()
    expect(shopper.flash).to_be_visible()
    expect(page.get_by_test_id("account").first.get_by_test_id("balance")).to_have_text("€12.75")
    shopper.shot("transferred")

    payee.page.reload()
    expect(payee_account.get_by_test_id("balance")).to_have_text("€7.25")
    payee.shot("payee-paid")


def test_the_admin_adds_a_product_and_changes_its_price(
    open_shopper: OpenShopper, shopper: Shopper
) -> None:
    admin = open_shopper()
    page = admin.page
    admin.visit("/", "catalogue")
    admin.log_in(ADMIN)
    admin.nav_link("Admin").click()
    expect(page).to_have_url(admin.url("/admin/products"))
    admin.shot("admin-products")
    admin.expect_every_form_has_a_csrf_token()

    token = uuid.uuid4().hex[:6].upper()
    sku, name = f"LMP-{token}", f"Desk lamp {token}"
    add = page.locator("form", has=page.get_by_role("button", name="Add product"))
    add.get_by_label("SKU", exact=True).fill(sku)
    add.get_by_label("Name", exact=True).fill(name)
    add.get_by_label("Price", exact=True).fill("9.99")
    add.get_by_label("Stock", exact=True).fill("3")
    admin.shot("adding")
    add.get_by_role("button", name="Add product").click()
    expect(admin.flash).to_be_visible()
    row = page.locator(f'[data-testid="admin-product"][data-sku="{sku}"]')
    expect(row.get_by_label(f"Price of {name}")).to_have_value("9.99")
    expect(row.get_by_label(f"Stock of {name}")).to_have_value("3")
    admin.shot("added")

    row.get_by_label(f"Price of {name}").fill("7.50")
    row.get_by_role("button", name="Save").click()
    expect(admin.flash).to_be_visible()
    expect(row.get_by_label(f"Price of {name}")).to_have_value("7.50")
    admin.shot("saved")

    admin.nav_link("Shop").click()
    lamp = admin.product(sku)
    expect(lamp.get_by_role("link", name=name)).to_be_visible()
    expect(lamp.get_by_test_id("price")).to_have_text("€7.50")
    expect(lamp.get_by_test_id("stock")).to_have_text("3 in stock")
    admin.shot("catalogue-after")

    # A customer sees the new price, no "Admin" link, and a 403 page at /admin/products.
    shopper.visit("/", "customer-catalogue")
    expect(shopper.product(sku).get_by_test_id("price")).to_have_text("€7.50")
    shopper.sign_up()
    expect(shopper.nav_link("Admin")).to_have_count(0)
    response = shopper.visit("/admin/products", "customer-refused", status=403)
    assert response.headers["content-type"].startswith("text/html")
    expect(shopper.heading).to_be_visible()


def test_unknown_pages_are_404_pages_in_the_common_layout(shopper: Shopper) -> None:
    shopper.visit("/", "catalogue")
    customer = shopper.sign_up()
    shopper.add_to_cart("MUG-001")
    for path in ("/products/999999", "/no-such-page"):
        response = shopper.visit(path, status=404)
        assert response.headers["content-type"].startswith("text/html")
        expect(shopper.heading).to_be_visible()
        expect(shopper.nav_link("Shop")).to_be_visible()
    # An error page is drawn without the web session (the session may be the error's cause).
    del customer


def test_sign_up_and_log_in_say_what_is_wrong(shopper: Shopper) -> None:
    page = shopper.page
    customer = new_customer()
    shopper.visit("/signup", "sign-up")
    form = page.locator("form", has=page.get_by_role("button", name="Sign up"))
    without_browser_validation(form)
    form.get_by_label("Name").fill(customer.name)
    form.get_by_label("E-mail").fill("a@b")
    form.get_by_label("Password").fill(customer.password)
    form.get_by_role("button", name="Sign up").click()
    expect(page.get_by_test_id("email-error")).to_be_visible()
    error = page.get_by_test_id("email-error").inner_text()
    expect(form.get_by_label("E-mail")).to_have_accessible_description(error)
    expect(shopper.heading).to_have_text("Create your account")
    shopper.expect_logged_out()
    shopper.shot("invalid-email")

    shopper.visit("/login", "log-in")
    page.get_by_label("E-mail").fill(customer.email)
    page.get_by_label("Password").fill("not-the-password")
    page.get_by_role("button", name="Log in", exact=True).click()
    expect(shopper.error).to_be_visible()
    expect(shopper.heading).to_have_text("Log in")
    shopper.expect_logged_out()
    shopper.shot("wrong-password")


def test_on_a_phone_nothing_scrolls_sideways(open_shopper: OpenShopper) -> None:
    shopper = open_shopper(viewport=PHONE)
    shopper.visit("/", "catalogue")
    shopper.sign_up()
    shopper.add_to_cart("TEE-001")
    for path in ("/", "/cart", "/checkout"):
        shopper.visit(path)
        width = shopper.page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], f"{path} is {width} px wide"


def test_the_keyboard_reaches_add_to_cart_and_enter_adds(shopper: Shopper) -> None:
    page = shopper.page
    shopper.visit("/", "catalogue")
    button = shopper.product("MUG-001").get_by_role("button", name="Add to cart")
    for _ in range(60):
        page.keyboard.press("Tab")
        if button.evaluate("element => element === document.activeElement"):
            break
    else:
        raise AssertionError("Tab never reached the mug's Add to cart button")
    shopper.shot("focused")
    page.keyboard.press("Enter")
    expect(shopper.flash).to_contain_text("Added Enamel mug to your cart.")
    expect(shopper.cart_count).to_have_text("1")
    shopper.shot("added")
