"""Helpers for the browser tests: Debian's Chromium through Playwright, axe-core, screenshots."""

from __future__ import annotations

import re
from pathlib import Path

from axe_playwright_python.sync_playwright import Axe
from django.conf import settings
from django.contrib.auth.models import User
from playwright.sync_api import Page, ViewportSize, expect

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = Path(settings.BASE_DIR) / "test-artifacts" / "screenshots"
PHONE = ViewportSize(width=390, height=844)
DESKTOP = ViewportSize(width=1280, height=900)

_axe = Axe()


def log_in(page: Page, base_url: str, user: User) -> None:
    """Through the login form, as a person would."""
    page.goto(f"{base_url}/accounts/login/")
    page.get_by_label("Username").fill(user.username)
    page.get_by_label("Password").fill(f"{user.username}-password-123")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("navigation", name="Main")).to_be_visible()


def check_page(page: Page, name: str) -> None:
    """No serious or critical axe-core violation; a screenshot saved as a test artifact."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    width = page.viewport_size["width"] if page.viewport_size else 0
    page.screenshot(path=str(SCREENSHOTS / f"{name}-{width}px.png"), full_page=True)
    results = _axe.run(page)
    serious = [
        f"{violation['id']} ({violation['impact']}): {violation['help']} at "
        + ", ".join(str(node["target"]) for node in violation["nodes"][:5])
        for violation in results.response["violations"]
        if violation["impact"] in ("serious", "critical")
    ]
    assert not serious, f"axe-core on {name} at {width}px:\n" + "\n".join(serious)


def no_horizontal_scroll(page: Page) -> bool:
    """The page body fits the viewport (wide tables scroll inside their own wrapper)."""
    return bool(page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1"))


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


_SECTIONS = {"Models": "/models/", "Endpoints": "/endpoints/", "API tokens": "/tokens/"}


def go_to(page: Page, section: str) -> None:
    """Follow a link of the main navigation ("Models", "Endpoints", "API tokens") and wait
    until that page has loaded, so the next lookup cannot hit the page being left."""
    page.get_by_role("navigation", name="Main").get_by_role("link", name=section).click()
    page.wait_for_url(re.compile(re.escape(_SECTIONS[section]) + "$"))
    expect(page.get_by_role("heading", level=1)).to_have_text(section)
