"""Browser fixtures: one Chromium per module, a fresh context (cookies) per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, Playwright, sync_playwright

from webui.tests.browser import CHROMIUM, CHROMIUM_ARGS, DESKTOP


@pytest.fixture(scope="module")
def playwright_driver() -> Iterator[Playwright]:
    # Playwright's sync API keeps an asyncio loop on this thread; the ORM calls the tests
    # make are still synchronous, so Django's async-safety check must stand aside.
    mp = pytest.MonkeyPatch()
    mp.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as driver:
        yield driver
    mp.undo()


@pytest.fixture(scope="module")
def browser(playwright_driver: Playwright) -> Iterator[Browser]:
    chromium = playwright_driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    yield chromium
    chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport=DESKTOP)
    context.set_default_timeout(15_000)
    yield context.new_page()
    context.close()
