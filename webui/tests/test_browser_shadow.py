"""Issue 16 in a real Chromium: the endpoint page's shadow panel reads its figures from the
page's own polling, and a shadow started through the form runs on a real local endpoint
(a real Celery worker, real R) until Stop shadow removes it. Found by label and role; each
page is checked by axe-core."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import Page, Request, expect
from pytest_django.live_server_helper import LiveServer

from deployer.models import Deployment, Shadow, ShadowPair
from deployer.services.endpoints import endpoint_create
from deployer.tests.pipeline_support import iris_version, stop_everything, train_iris_models
from testsupport.factories import make_shadow
from testsupport.pipeline import drive
from testsupport.r_models import expected
from testsupport.services import CeleryWorker
from testsupport.waiting import wait_for
from webui.tests.browser import PHONE, check_page, log_in, no_horizontal_scroll
from webui.tests.test_actions import live_endpoint, ready_version

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

ENDPOINT = "iris-shadowed"
# A shadow deployment starts an R runtime; ending it removes one.
ROLLOUT_TIMEOUT = 90_000
# The panel polls every 5 s: a change shows within two polls.
POLL_TIMEOUT = 11_000


@pytest.fixture(scope="module")
def iris_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_iris_models(tmp_path_factory)


@pytest.fixture
def shadowed_removed_afterwards() -> Iterator[None]:
    yield
    stop_everything([ENDPOINT])


def store(shadow: Shadow, live: list[str], answer: list[str]) -> None:
    ShadowPair.objects.create(
        shadow=shadow, live_status=200, shadow_status=200, live_ms=5, shadow_ms=7, live_output=live,
        shadow_output=answer,
    )  # fmt: skip


def test_the_panel_shows_the_agreement_follows_new_pairs_and_stops_polling_when_the_shadow_ends(
    page: Page, live_server: LiveServer, owner: User
) -> None:
    endpoint = live_endpoint(owner)
    shadow = make_shadow(endpoint, ready_version(owner), sample_percent=100)
    # 3 of 4 rows agree.
    store(shadow, ["setosa", "setosa"], ["setosa", "versicolor"])
    store(shadow, ["virginica", "versicolor"], ["virginica", "versicolor"])
    polls: list[str] = []

    def count_polls(request: Request) -> None:
        if "fragment=shadow" in request.url:
            polls.append(request.url)

    page.on("request", count_polls)
    log_in(page, live_server.url, owner)
    page.goto(f"{live_server.url}/endpoints/iris/")
    panel = page.get_by_role("region", name="Shadow")
    agreement = panel.locator("#shadow-agreement")
    expect(agreement).to_have_text("75.0 %")
    expect(panel.get_by_role("table")).to_contain_text("setosa")
    expect(panel.get_by_role("button", name="Promote")).to_be_enabled()
    expect(panel.get_by_role("button", name="Stop shadow")).to_be_enabled()
    check_page(page, "endpoint-shadow")

    # Two more rows that disagree: the polled panel shows 3 of 6.
    store(shadow, ["setosa", "setosa"], ["virginica", "virginica"])
    expect(agreement).to_have_text("50.0 %", timeout=POLL_TIMEOUT)
    expect(panel).to_contain_text("(3 of 6 rows)")

    Shadow.objects.filter(pk=shadow.pk).update(status=Shadow.Status.ENDED, outcome="Ended: its duration is over.")
    expect(panel).to_contain_text("Ended: its duration is over.", timeout=POLL_TIMEOUT)
    expect(panel.get_by_role("button", name="Start shadow")).to_be_visible()
    # The 286 answer stopped htmx: no poll in the next two poll periods.
    seen = len(polls)
    page.wait_for_timeout(POLL_TIMEOUT)
    assert len(polls) == seen
    expect(agreement).to_have_text("50.0 %")


def test_a_numeric_shadow_shows_its_differences_as_bars_that_fit_a_phone(
    page: Page, live_server: LiveServer, owner: User
) -> None:
    endpoint = live_endpoint(owner)
    shadow = make_shadow(endpoint, ready_version(owner))
    # Differences 0.6, 0.6, -1.5 and 2.5: mean (0.6 + 0.6 + 1.5 + 2.5) / 4 = 1.3.
    ShadowPair.objects.create(
        shadow=shadow, live_status=200, shadow_status=200, live_ms=5, shadow_ms=7,
        live_output=[1.0, 2.0, 3.0, 4.0], shadow_output=[1.6, 2.6, 1.5, 6.5],
    )  # fmt: skip
    log_in(page, live_server.url, owner)
    page.set_viewport_size(PHONE)
    page.goto(f"{live_server.url}/endpoints/iris/")
    panel = page.get_by_role("region", name="Shadow")

    expect(panel.locator("#shadow-mean-difference")).to_have_text("1.3")
    expect(panel.locator("#shadow-max-difference")).to_have_text("2.5")
    bars = panel.get_by_role("list", name="Histogram of differences").get_by_role("listitem")
    expect(bars).to_have_count(10)
    # From -1.5 to 2.5 in bins of 0.4: both 0.6s in the 6th, [0.5, 0.9).
    expect(bars.nth(5).locator(".bin")).to_have_text("0.5 to 0.9")
    expect(bars.nth(5).locator(".bin-count")).to_have_text("2")
    assert no_horizontal_scroll(page)
    check_page(page, "endpoint-shadow-numeric")


def test_a_shadow_started_through_the_form_runs_answers_copies_and_stops(
    page: Page,
    live_server: LiveServer,
    celery_worker: CeleryWorker,
    owner: User,
    iris_models: Path,
    shadowed_removed_afterwards: None,
) -> None:
    issued = endpoint_create(owner=owner, name=ENDPOINT, model_version=iris_version(owner, iris_models, "v1"))
    assert drive(issued.endpoint.current_deployment).status == Deployment.Status.SUCCEEDED  # type: ignore[arg-type]
    v2 = iris_version(owner, iris_models, "v2")
    log_in(page, live_server.url, owner)
    page.goto(f"{live_server.url}/endpoints/{ENDPOINT}/")
    panel = page.get_by_role("region", name="Shadow")

    panel.get_by_label("Shadow version").select_option(str(v2.pk))
    panel.get_by_label("Sample percent").fill("100")
    panel.get_by_label("Duration").fill("1h")
    panel.get_by_role("button", name="Start shadow").click()
    expect(panel.locator("#shadow-state .badge")).to_have_text("running", timeout=ROLLOUT_TIMEOUT)
    check_page(page, "endpoint-shadow-running")

    # The test form's example (the first two rows) through the gateway, until a copy is paired
    # (the web process re-reads the route, with the shadow's, within its cache period).
    shadow = Shadow.objects.get(endpoint__name=ENDPOINT)

    def invoke_and_pair() -> Any:
        page.get_by_role("button", name="Invoke").click()
        expect(page.get_by_role("region", name="Response")).to_contain_text("Status 200")
        return ShadowPair.objects.filter(shadow=shadow).exists()

    wait_for(invoke_and_pair, timeout=30, interval=1, what="a paired request")
    truth = expected(iris_models)
    agreed = sum(live == answer for live, answer in zip(truth["v1"][:2], truth["v2"][:2], strict=True))
    expect(panel.locator("#shadow-agreement")).to_have_text(f"{agreed / 2 * 100:.1f} %", timeout=POLL_TIMEOUT)

    panel.get_by_role("button", name="Stop shadow").click()
    expect(panel.locator("#shadow-state .badge")).to_have_text("ended", timeout=ROLLOUT_TIMEOUT)
    expect(page.locator("#serving-model")).to_contain_text("iris v1")
    shadow.refresh_from_db()
    assert (shadow.status, shadow.outcome) == (Shadow.Status.ENDED, "Stopped by its owner.")
