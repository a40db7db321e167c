"""The whole journey in a real Chromium against the real app, a real Celery worker, Redis
and R: upload, inspect, deploy locally, watch it go live, invoke, update, roll back,
delete. Elements are found by their labels and roles; every page is checked by axe-core."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import Browser, Page, expect
from pytest_django.live_server_helper import LiveServer

from deployer.models import Endpoint, LogLine, ModelVersion
from deployer.tests.pipeline_support import stop_everything, train_iris_models
from testsupport.r_models import expected, rows_csv
from testsupport.services import CeleryWorker
from webui.tests.browser import DESKTOP, PHONE, check_page, go_to, log_in

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

ENDPOINT = "iris-web"
# A deploy, update and rollback each start R; the first also waits for inspection.
ROLLOUT_TIMEOUT = 90_000


@pytest.fixture(scope="module")
def iris_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_iris_models(tmp_path_factory)


@pytest.fixture
def cleanup() -> Iterator[None]:
    yield
    stop_everything([ENDPOINT])


def upload(page: Page, base_url: str, name: str, model: Path) -> None:
    page.goto(f"{base_url}/models/")
    page.get_by_role("link", name="Upload model").click()
    page.get_by_label("Name").fill(name)
    page.get_by_label("Model file").set_input_files(model)
    page.get_by_role("button", name="Upload").click()


def status_badge(page: Page, section: str) -> object:
    return page.locator(f"#{section} .badge").first


def invoke(page: Page, body: str, content_type: str) -> None:
    page.get_by_label("Payload").fill(body)
    page.get_by_label("Content type").select_option(content_type)
    page.get_by_role("button", name="Invoke").click()


def test_upload_deploy_invoke_update_roll_back_and_delete_in_the_browser(
    page: Page,
    live_server: LiveServer,
    celery_worker: CeleryWorker,
    owner: User,
    iris_models: Path,
    cleanup: None,
) -> None:
    truth = expected(iris_models)
    csv = rows_csv(truth["rows"]).decode()
    log_in(page, live_server.url, owner)

    # Upload v1 and watch inspection finish without reloading.
    upload(page, live_server.url, "iris", iris_models / "v1.rds")
    expect(page.get_by_role("heading", name="iris v1")).to_be_visible()
    expect(page.locator("#inspection .badge").first).to_have_text("ready", timeout=ROLLOUT_TIMEOUT)
    expect(page.get_by_role("table", name="Input schema")).to_contain_text("Petal.Width")
    expect(page.locator("#inspection")).to_contain_text("randomForest")
    check_page(page, "flow-model-ready")

    # Deploy locally; the page follows the steps and the logs until live.
    page.get_by_label("Endpoint name").fill(ENDPOINT)
    expect(page.get_by_label("Target")).to_have_value("local")
    page.get_by_role("button", name="Deploy").click()
    expect(page.get_by_role("heading", name=ENDPOINT)).to_be_visible()
    expect(page.locator("#overview .badge").first).to_have_text("live", timeout=ROLLOUT_TIMEOUT)
    logs = page.get_by_role("region", name="Logs")
    expect(logs.get_by_role("listitem").first).to_be_visible()
    expect(page.get_by_role("list", name="Deployment steps")).to_contain_text("switch_traffic")
    expect(page.get_by_label("Payload")).not_to_be_empty()
    check_page(page, "flow-endpoint-live")

    # The prefilled example answers; then R's own predictions for known rows come back.
    page.get_by_role("button", name="Invoke").click()
    response = page.get_by_role("region", name="Response")
    expect(response).to_contain_text("Status 200")
    invoke(page, csv, "text/csv")
    for species in truth["v1"]:
        expect(response).to_contain_text(species)
    expect(response).to_contain_text(str(truth["v1"][:2]).replace("'", '"').replace(", ", ",")[1:-1])
    # Runtime logs are collected, and the chart rendered, at most every few seconds (a
    # chart drawn from an earlier collection may show only the smoke test's line).
    chart = page.get_by_role("region", name="Invocations and latency")
    # The two above and the pipeline's smoke test of the example payload.
    three = "3 invocations in the last 30 minutes"
    for _attempt in range(30):
        page.get_by_role("button", name="Refresh chart").click()
        page.wait_for_timeout(500)
        if three in chart.inner_text():
            break
    expect(chart).to_contain_text(three)
    check_page(page, "flow-invoked")

    # Upload v2 (same name: version 2) and update the endpoint to it.
    upload(page, live_server.url, "iris", iris_models / "v2.rds")
    expect(page.get_by_role("heading", name="iris v2")).to_be_visible()
    expect(page.locator("#inspection .badge").first).to_have_text("ready", timeout=ROLLOUT_TIMEOUT)
    page.goto(f"{live_server.url}/endpoints/{ENDPOINT}/")
    page.get_by_label("Model version").select_option(label="iris v2")
    page.get_by_role("button", name="Update model").click()
    expect(page.get_by_role("status")).to_contain_text("Updating iris-web to iris v2")
    expect(page.locator("#serving-model")).to_have_text("iris v2", timeout=ROLLOUT_TIMEOUT)
    expect(page.locator("#overview .badge").first).to_have_text("live")
    invoke(page, csv, "text/csv")
    expect(response).to_contain_text(str(truth["v2"][:2]).replace("'", '"').replace(", ", ",")[1:-1])

    # Roll back to v1: the button enabled itself when the update finished.
    expect(page.get_by_role("button", name="Roll back")).to_be_enabled()
    page.get_by_role("button", name="Roll back").click()
    expect(page.locator("#serving-model")).to_have_text("iris v1", timeout=ROLLOUT_TIMEOUT)
    expect(page.locator("#overview .badge").first).to_have_text("live")
    invoke(page, csv, "text/csv")
    expect(response).to_contain_text(str(truth["v1"][:2]).replace("'", '"').replace(", ", ",")[1:-1])

    go_to(page, "Endpoints")
    expect(page.get_by_role("row", name=ENDPOINT)).to_contain_text("live")
    check_page(page, "flow-endpoints")

    # Delete, after confirming.
    page.get_by_role("link", name=ENDPOINT).click()
    page.get_by_role("button", name="Delete endpoint").click()
    expect(page.get_by_role("heading", name=f"Delete endpoint {ENDPOINT}?")).to_be_visible()
    check_page(page, "flow-delete-confirm")
    page.get_by_role("button", name=f"Yes, delete endpoint {ENDPOINT}").click()
    expect(page.locator("#overview .badge").first).to_have_text("deleted", timeout=ROLLOUT_TIMEOUT)
    assert Endpoint.objects.get(name=ENDPOINT).status == Endpoint.Status.DELETED
    assert LogLine.objects.filter(endpoint__name=ENDPOINT, source=LogLine.Source.RUNTIME).exists()


def test_a_model_r_cannot_use_shows_why_on_its_page(
    page: Page, live_server: LiveServer, celery_worker: CeleryWorker, owner: User, tmp_path: Path
) -> None:
    not_a_model = tmp_path / "table.rds"
    import subprocess

    from django.conf import settings

    subprocess.run(
        [settings.RSCRIPT, "--vanilla", "-e", f"saveRDS(head(iris), '{not_a_model}')"], check=True, capture_output=True
    )
    log_in(page, live_server.url, owner)
    upload(page, live_server.url, "table", not_a_model)
    expect(page.locator("#inspection .badge").first).to_have_text("invalid", timeout=ROLLOUT_TIMEOUT)
    reason = page.locator("#inspection").get_by_role("alert")
    expect(reason).to_contain_text("not an R model")
    assert ModelVersion.objects.get(name="table").status == ModelVersion.Status.INVALID
    check_page(page, "flow-model-invalid")


def test_a_refused_upload_shows_the_servers_message_next_to_the_file_field_after_a_progress_bar(
    page: Page, live_server: LiveServer, owner: User, tmp_path: Path
) -> None:
    junk = tmp_path / "notes.rds"
    junk.write_bytes(os.urandom(24 * 1024 * 1024))
    log_in(page, live_server.url, owner)
    page.goto(f"{live_server.url}/models/upload/")
    check_page(page, "upload")
    page.get_by_label("Name").fill("junk")
    page.get_by_label("Model file").set_input_files(junk)
    page.get_by_role("button", name="Upload").click()
    progress = page.get_by_role("progressbar", name="Upload progress")
    expect(progress).to_be_visible()
    error = page.locator("#file-error")
    expect(error).to_be_visible(timeout=30_000)
    expect(page.get_by_label("Model file")).to_have_attribute("aria-invalid", "true")
    assert progress.evaluate("bar => bar.value") == 100
    assert not ModelVersion.objects.filter(name="junk").exists()
    check_page(page, "upload-refused")


def test_another_users_endpoint_page_is_404(page: Page, live_server: LiveServer, owner: User, colleague: User) -> None:
    Endpoint.objects.create(owner=owner, name="owners-endpoint", status=Endpoint.Status.LIVE)
    log_in(page, live_server.url, colleague)
    response = page.goto(f"{live_server.url}/endpoints/owners-endpoint/")
    assert response is not None
    assert response.status == 404
    expect(page.get_by_role("heading", name="Not found")).to_be_visible()
    check_page(page, "not-found")
    go_to(page, "Endpoints")
    expect(page.get_by_role("link", name="owners-endpoint")).to_have_count(0)


def test_the_endpoint_pages_fit_a_phone(browser: Browser, live_server: LiveServer, owner: User) -> None:
    Endpoint.objects.create(owner=owner, name="phone-check", status=Endpoint.Status.LIVE, public=True)
    context = browser.new_context(viewport=PHONE)
    page = context.new_page()
    log_in(page, live_server.url, owner)
    page.goto(f"{live_server.url}/endpoints/phone-check/")
    expect(page.get_by_role("button", name="Rotate API key")).to_be_visible()
    check_page(page, "endpoint-public")
    page.set_viewport_size(DESKTOP)
    check_page(page, "endpoint-public")
    page.get_by_role("button", name="Rotate API key").click()
    expect(page.get_by_role("heading", name="New API key: phone-check")).to_be_visible()
    expect(page.get_by_label("API key")).to_have_value(re.compile(r"^rdk_"))
    check_page(page, "api-key")
    context.close()
