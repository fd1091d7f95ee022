"""Browser tests: headless Chromium (Debian's package, given by path: Playwright downloads
nothing) against a live qfserve on the fake engine. Screenshots go to build/console-screenshots/."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    Page,
    Playwright,
    expect,
    sync_playwright,
)

from tests.console.live import LiveServer, live_server
from tests.fake_engine import FakeEngine, Script

CHROMIUM = Path("/usr/bin/chromium")
# The machine's network is closed: nothing Chromium would fetch on its own.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "build" / "console-screenshots"
ENDPOINTS = ("llama_2_7b", "ernie_speed")
# Words sent a little apart, so a stream is seen arriving in pieces.
STREAMED = Script(
    answer="Tokyo is the capital of Japan, and its largest city by far.", token_delay=0.25
)
# Two cores shared with other work: what the page does in a blink may take seconds.
expect.set_options(timeout=15_000)


# Package scope, not session: Playwright's sync API runs an event loop in the main thread while
# it is open, and the tests after these call asyncio.run(), which refuses to run inside one.
@pytest.fixture(scope="package")
def playwright() -> Iterator[Playwright]:
    if not CHROMIUM.exists():
        raise RuntimeError(f"{CHROMIUM} is missing: run `bash scripts/services.sh`")
    with sync_playwright() as running:
        yield running


@pytest.fixture(scope="package")
def browser(playwright: Playwright) -> Iterator[Browser]:
    launched = playwright.chromium.launch(
        executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
    )
    try:
        yield launched
    finally:
        launched.close()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    engine = FakeEngine(script=STREAMED)
    with live_server(tmp_path_factory.mktemp("console"), engine, ENDPOINTS) as server:
        yield server


@pytest.fixture(scope="module")
def admin(live: LiveServer) -> tuple[str, str]:
    return "ops", live.create_admin("ops")


@pytest.fixture
def context(browser: Browser, live: LiveServer) -> Iterator[BrowserContext]:
    opened = browser.new_context(
        base_url=live.url,
        locale="en-US",
        viewport={"width": 1280, "height": 860},
        permissions=["clipboard-read", "clipboard-write"],
    )
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    return context.new_page()


def screenshot(page: Page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
