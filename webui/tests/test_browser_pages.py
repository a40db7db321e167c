"""The dashboard in a real Chromium: found by label and role, axe-clean, phone and desktop."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import Page, expect
from pytest_django.live_server_helper import LiveServer

from deployer.models import Endpoint, LogLine
from deployer.services.tokens import api_token_authenticate
from webui.tests.browser import DESKTOP, PHONE, check_page, go_to, log_in, no_horizontal_scroll
from webui.tests.test_pages import deploying_endpoint, finish

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def test_api_token_is_created_shown_once_copied_and_revoked(page: Page, live_server: LiveServer, owner: User) -> None:
    log_in(page, live_server.url, owner)
    go_to(page, "API tokens")
    expect(page.get_by_role("heading", name="API tokens")).to_be_visible()
    check_page(page, "tokens-empty")

    page.get_by_label("Token name").fill("ci")
    page.get_by_role("button", name="Create token").click()
    secret = page.get_by_label("Token", exact=True).input_value()
    assert api_token_authenticate(secret=secret) is not None
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.get_by_role("button", name="Copy").click()
    expect(page.get_by_role("button", name="Copied")).to_be_visible()
    check_page(page, "tokens-created")

    go_to(page, "API tokens")
    expect(page.get_by_label("Token", exact=True)).to_have_count(0)
    page.get_by_role("button", name=re.compile(r"^Revoke token")).click()
    expect(page.get_by_text("revoked", exact=False).first).to_be_visible()
    assert api_token_authenticate(secret=secret) is None


def test_endpoint_page_tails_logs_live_pauses_and_stops_polling_when_live(
    page: Page, live_server: LiveServer, owner: User
) -> None:
    endpoint = deploying_endpoint(owner)
    LogLine.objects.create(endpoint=endpoint, source=LogLine.Source.PIPELINE, message="deployment planned")
    log_in(page, live_server.url, owner)
    go_to(page, "Endpoints")
    expect(page.get_by_role("cell", name="deploying")).to_be_visible()
    check_page(page, "endpoints")
    page.get_by_role("link", name="iris").click()

    logs = page.get_by_role("region", name="Logs")
    expect(logs).to_contain_text("deployment planned")
    expect(page.get_by_role("list", name="Deployment steps")).to_contain_text("1.5 s")
    check_page(page, "endpoint-deploying")

    LogLine.objects.create(endpoint=endpoint, source=LogLine.Source.RUNTIME, message="Rserve listening on 127.0.0.1")
    expect(logs).to_contain_text("Rserve listening on 127.0.0.1")

    logs.get_by_role("button", name="Pause").click()
    expect(logs.get_by_role("button", name="Resume")).to_be_visible()
    LogLine.objects.create(endpoint=endpoint, source=LogLine.Source.RUNTIME, message="arrived while paused")
    page.wait_for_timeout(2500)
    expect(logs).not_to_contain_text("arrived while paused")
    logs.get_by_role("button", name="Resume").click()
    expect(logs).to_contain_text("arrived while paused")

    finish(endpoint, Endpoint.Status.LIVE)
    expect(page.locator("#overview")).to_contain_text("live")
    expect(logs.get_by_role("button", name="Resume")).to_be_visible()
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.wait_for_timeout(2500)
    assert requests == [], f"polling went on after the endpoint became live: {requests}"


def test_endpoints_list_updates_statuses_without_a_reload_then_stops_polling(
    page: Page, live_server: LiveServer, owner: User
) -> None:
    endpoint = deploying_endpoint(owner)
    log_in(page, live_server.url, owner)
    go_to(page, "Endpoints")
    row = page.get_by_role("row", name=re.compile(r"^iris "))
    expect(row).to_contain_text("deploying")
    page.evaluate("window.notReloaded = true")

    finish(endpoint, Endpoint.Status.LIVE)
    expect(row).to_contain_text("live")
    assert page.evaluate("window.notReloaded") is True
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.wait_for_timeout(4500)
    assert requests == [], f"the list kept polling with nothing in progress: {requests}"


def test_pages_fit_a_phone_and_pass_axe(page: Page, live_server: LiveServer, owner: User) -> None:
    deploying_endpoint(owner)
    page.set_viewport_size(PHONE)
    log_in(page, live_server.url, owner)
    for link, name in (("Models", "models"), ("Endpoints", "endpoints"), ("API tokens", "tokens")):
        go_to(page, link)
        expect(page.get_by_role("heading", level=1)).to_be_visible()
        assert no_horizontal_scroll(page), name
        check_page(page, name)
    go_to(page, "Endpoints")
    page.get_by_role("link", name="iris").click()
    expect(page.get_by_role("heading", name="iris", exact=True)).to_be_visible()
    assert no_horizontal_scroll(page)
    check_page(page, "endpoint")
    page.get_by_role("button", name="Delete endpoint").click()
    expect(page.get_by_role("heading", name="Delete endpoint iris?")).to_be_visible()
    assert no_horizontal_scroll(page)
    check_page(page, "delete-confirm")
    go_to(page, "Models")
    page.get_by_role("link", name="iris").click()
    expect(page.get_by_role("heading", name="iris v1")).to_be_visible()
    assert no_horizontal_scroll(page)
    check_page(page, "model-version")
    go_to(page, "Models")
    page.get_by_role("link", name="Upload model").click()
    expect(page.get_by_role("heading", name="Upload model")).to_be_visible()
    assert no_horizontal_scroll(page)
    check_page(page, "upload")
    page.set_viewport_size(DESKTOP)
    go_to(page, "Models")
    page.get_by_role("link", name="iris").click()
    expect(page.get_by_role("heading", name="iris v1")).to_be_visible()
    check_page(page, "model-version")


def tab_to(page: Page, name: str, limit: int = 40) -> None:
    """Press Tab until the focused element's text or label is `name`, as a keyboard user would."""
    for _ in range(limit):
        page.keyboard.press("Tab")
        focused = page.evaluate(
            """() => {
                const el = document.activeElement;
                const label = el.labels && el.labels.length ? el.labels[0].textContent : "";
                return (el.getAttribute("aria-label") || label || el.textContent || "").trim();
            }"""
        )
        if focused == name:
            return
    raise AssertionError(f"{name!r} not reachable with Tab")


def test_keyboard_alone_logs_in_creates_a_token_and_pauses_logs(
    page: Page, live_server: LiveServer, owner: User
) -> None:
    endpoint = deploying_endpoint(owner)
    page.goto(f"{live_server.url}/accounts/login/")
    check_page(page, "login")
    expect(page.get_by_label("Username")).to_be_focused()
    page.keyboard.type(owner.username)
    page.keyboard.press("Tab")
    page.keyboard.type("owner-password-123")
    page.keyboard.press("Enter")
    expect(page.get_by_role("navigation", name="Main")).to_be_visible()
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("main")).to_be_focused()

    main_nav = page.get_by_role("navigation", name="Main")
    for link in ("Models", "Endpoints", "API tokens"):
        page.keyboard.press("Home")
        tab_to(page, link)
        page.keyboard.press("Enter")
        expect(main_nav.get_by_role("link", name=link)).to_have_attribute("aria-current", "page")

    tab_to(page, "Token name")
    page.keyboard.type("laptop")
    tab_to(page, "Create token")
    page.keyboard.press("Enter")
    expect(page.get_by_label("Token", exact=True)).to_be_visible()

    page.goto(f"{live_server.url}/endpoints/{endpoint.name}/")
    tab_to(page, "Pause")
    page.keyboard.press("Enter")
    expect(page.get_by_role("button", name="Resume")).to_be_focused()
