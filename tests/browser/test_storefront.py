"""The storefront in headless Chromium against a real `shop serve`: sign up, shop, pay, log out."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from serving import SHOP, Process, base_url, shop_env, shop_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if CHROMIUM is None:
        message = "Chromium is not installed (apt-get install chromium)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    workdir = tmp_path_factory.mktemp("storefront")
    env = shop_env(f"sqlite+aiosqlite:///{workdir / 'shop.db'}")
    subprocess.run([SHOP, "seed", "--demo"], cwd=workdir, env=env, check=True, timeout=60)
    process: Process = shop_server(workdir, env).start()
    yield base_url(process)
    process.stop()


@pytest.fixture
def page(server: str) -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        context = browser.new_context(base_url=server)
        yield context.new_page()
        context.close()
        browser.close()


def test_sign_up_log_in_order_and_log_out(page: object, tmp_path: Path) -> None:
    from playwright.sync_api import Page, expect

    assert isinstance(page, Page)
    page.goto("/")
    expect(page.get_by_test_id("whoami")).to_have_text("not logged in")
    expect(page.locator("#products tr")).to_have_count(5)

    signup = page.locator("#signup-form")
    signup.get_by_label("Name").fill("Browser Buyer")
    signup.get_by_label("E-mail").fill("browser@example.com")
    signup.get_by_label("Password").fill("browser-password")
    signup.get_by_role("button", name="Create account").click()
    expect(page.get_by_test_id("message")).to_contain_text("Account created")

    login = page.locator("#login-form")
    login.get_by_label("E-mail").fill("browser@example.com")
    login.get_by_label("Password").fill("browser-password")
    login.get_by_role("button", name="Log in").click()
    expect(page.get_by_test_id("whoami")).to_contain_text("Browser Buyer")

    mug = page.locator('#products tr[data-sku="MUG-001"]')
    stock_before = int(mug.locator("td").nth(2).inner_text())
    mug.get_by_role("button", name="Add to cart").click()
    mug.get_by_role("button", name="Add to cart").click()
    expect(page.locator("#cart-total")).to_have_text("25.00")
    page.get_by_role("button", name="Place order").click()
    expect(page.get_by_test_id("message")).to_contain_text("is paid")
    expect(page.locator("#orders li")).to_have_count(1)
    expect(mug.locator("td").nth(2)).to_have_text(str(stock_before - 2))

    page.locator("#checkout-form input[name=card_number]").fill("4000000000000002")
    mug.get_by_role("button", name="Add to cart").click()
    page.get_by_role("button", name="Place order").click()
    expect(page.get_by_test_id("message")).to_contain_text("declined")
    expect(page.locator("#orders li")).to_have_count(1)

    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_test_id("whoami")).to_have_text("not logged in")
    page.reload()
    expect(page.get_by_test_id("whoami")).to_have_text("not logged in")
    page.screenshot(path=str(tmp_path / "storefront.png"))
