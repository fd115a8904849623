"""The storefront in headless Chromium, against a real `shop serve` and `shop fake-gateway`.

One server for the whole run (demo data, an administrator, the card simulator as its own
process so its charges can be counted over HTTP); one browser per test module; each test opens
its own contexts (cookie jars), signs up its own customers, and photographs every page it
shows into ``test-output/browser/<test>/`` (``BROWSER_SCREENSHOTS`` moves that folder).

A test fails when a page it opened logged a console error or raised: that is how a Content
Security Policy violation, a missing favicon or a broken script shows. Chromium also logs
"Failed to load resource" for a page that is itself a 4xx (an error page, a refused form shown
again): that is the page's status, which the tests check where it matters, so it is not counted.
On failure a test photographs its open pages (``NN-failed.png``) and shows the server's log.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    Response,
    sync_playwright,
)
from serving import SHOP, Process, base_url, fake_gateway, shop_env, shop_server
from storefront import ADMIN, OpenShopper, Shop, Shopper, Snap

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = Path(os.environ.get("BROWSER_SCREENSHOTS") or REPO / "test-output" / "browser")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
GATEWAY_LATENCY_MS = 150


def require_chromium() -> str:
    if CHROMIUM is None:
        message = "Chromium is not installed (apt-get install chromium)"
        if IN_CI:
            pytest.fail(f"{message}; CI=true requires it", pytrace=False)
        pytest.skip(message)
    return CHROMIUM


@pytest.fixture(scope="session")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    require_chromium()  # before starting anything
    workdir = tmp_path_factory.mktemp("storefront")
    gateway: Process = fake_gateway(workdir, GATEWAY_LATENCY_MS).start()
    try:
        env = shop_env(
            f"sqlite+aiosqlite:///{workdir / 'shop.db'}",
            SHOP_PAYMENT_GATEWAY=base_url(gateway),
            SHOP_ADMIN_EMAIL=ADMIN.email,
            SHOP_ADMIN_PASSWORD=ADMIN.password,
        )
        subprocess.run([SHOP, "seed", "--demo"], cwd=workdir, env=env, check=True, timeout=60)
        server = shop_server(workdir, env).start()
        try:
            yield Shop(base_url(server), base_url(gateway), server.log)
        finally:
            server.stop()
    finally:
        gateway.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Chromium, one per module: Playwright's sync API runs its own event loop, which must not
    outlive the module into the asyncio tests of other folders."""
    executable = require_chromium()
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, headless=True)
        yield chromium
        chromium.close()


# --- console errors: collected per test, checked when the test body has run ----------------


@dataclass
class BrowserProblems:
    """Console errors and uncaught exceptions of every page a test opened."""

    messages: list[tuple[str, str]] = field(default_factory=list)  # (text, url it names)
    failed_documents: set[str] = field(default_factory=set)
    pages: list[Page] = field(default_factory=list)

    def watch(self, page: Page) -> None:
        self.pages.append(page)
        page.on("console", lambda message: self._console(page, message))
        page.on("pageerror", lambda error: self.messages.append((f"page error: {error}", "")))
        page.on("response", self._response)

    def _console(self, page: Page, message: ConsoleMessage) -> None:
        if message.type == "error":
            url = message.location.get("url") or page.url
            self.messages.append((f"console error: {message.text}", url))

    def _response(self, response: Response) -> None:
        request = response.request
        if response.status >= 400 and request.resource_type == "document":
            self.failed_documents.add(response.url)

    def unexpected(self) -> list[str]:
        return [
            f"{text} ({url})" if url else text
            for text, url in self.messages
            if not (
                text.startswith("console error: Failed to load resource")
                and url in self.failed_documents
            )
        ]


PROBLEMS = pytest.StashKey[BrowserProblems]()
SERVER_LOG = pytest.StashKey[Path]()
SNAP = pytest.StashKey[Snap]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """Fail a test whose pages logged errors. A test that failed otherwise photographs its
    open pages as they were, and shows the browser's errors and the server's log."""
    problems = item.stash.get(PROBLEMS, None)
    try:
        result = yield
    except BaseException:
        if problems is not None and (snap := item.stash.get(SNAP, None)) is not None:
            for page in problems.pages:
                with contextlib.suppress(Exception):  # a page or browser already gone
                    if not page.is_closed():
                        snap(page, "failed")
        if problems is not None and (unexpected := problems.unexpected()):
            item.add_report_section("call", "browser errors", "\n".join(unexpected))
        if (log := item.stash.get(SERVER_LOG, None)) is not None:
            tail = log.read_text(errors="replace").splitlines()[-60:]
            item.add_report_section("call", f"shop serve log ({log})", "\n".join(tail))
        raise
    if problems is not None and (unexpected := problems.unexpected()):
        lines = "\n".join(f"  {line}" for line in unexpected)
        pytest.fail(f"the browser reported errors:\n{lines}", pytrace=False)
    return result


# --- screenshots --------------------------------------------------------------------------


class Screenshots:
    """``snap(page, "cart")`` writes the test's next ``NN-cart.png``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.count = 0

    def __call__(self, page: Page, name: str) -> Path:
        self.count += 1
        slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "page"
        path = self.folder / f"{self.count:02d}-{slug}.png"
        page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture
def snap(request: pytest.FixtureRequest) -> Snap:
    """The test's screenshot folder, emptied when the test starts and kept afterwards."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", request.node.name).strip("-")
    folder = SCREENSHOTS / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return Screenshots(folder)


# --- browser contexts and the customers in them ----------------------------------------------


@pytest.fixture
def open_shopper(
    request: pytest.FixtureRequest, shop: Shop, browser: Browser, snap: Snap
) -> Iterator[OpenShopper]:
    """``open_shopper()``: a new browser context (its own cookies, as another device would
    have) and a tab in it. Keyword arguments go to ``browser.new_context``, e.g.
    ``java_script_enabled=False`` or ``viewport={"width": 375, "height": 740}``."""
    problems = BrowserProblems()
    request.node.stash[PROBLEMS] = problems
    request.node.stash[SERVER_LOG] = shop.server_log
    request.node.stash[SNAP] = snap
    contexts: list[BrowserContext] = []

    def open_(**options: Any) -> Shopper:
        context = browser.new_context(base_url=shop.url, **options)
        context.set_default_timeout(5_000)
        context.on("page", problems.watch)
        contexts.append(context)
        return Shopper(context.new_page(), snap, shop.url)

    yield open_
    for context in contexts:
        context.close()


@pytest.fixture
def shopper(open_shopper: OpenShopper) -> Shopper:
    """A tab of a fresh browser context with JavaScript on."""
    return open_shopper()
