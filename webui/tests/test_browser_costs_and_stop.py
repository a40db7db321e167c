"""Issue 14 in a real Chromium: the cost of each endpoint and the total on the list, the
Stop then Start buttons on a real local endpoint run by a real Celery worker, and the idle
notices. Found by label and role; every page is checked by axe-core."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.utils import timezone
from playwright.sync_api import Page, expect
from pytest_django.live_server_helper import LiveServer

from deployer.models import Deployment, Endpoint, LogLine, ModelVersion
from deployer.services.endpoints import endpoint_create, endpoints_stop_idle
from deployer.tests.pipeline_support import iris_version, stop_everything, train_iris_models
from testsupport.factories import make_endpoint, make_model_version
from testsupport.moto import MotoServer
from testsupport.pipeline import drive
from testsupport.services import CeleryWorker
from webui.tests.browser import check_page, go_to, log_in
from webui.tests.test_actions import live_endpoint

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

ENDPOINT = "iris-nap"
# A stop, then a start running R again.
ROLLOUT_TIMEOUT = 90_000


@pytest.fixture(scope="module")
def iris_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_iris_models(tmp_path_factory)


@pytest.fixture
def aws(moto_server: MotoServer) -> MotoServer:
    """The session's moto server, emptied: it has no Price List API, so the bundled prices
    are used, as in deployer/tests/test_costs.py."""
    moto_server.reset()
    return moto_server


@pytest.fixture
def nap_removed_afterwards() -> Iterator[None]:
    yield
    stop_everything([ENDPOINT])


def test_the_list_shows_each_endpoints_cost_and_the_total(
    page: Page, live_server: LiveServer, aws: MotoServer, owner: User
) -> None:
    model = make_model_version(owner, name="priced", status=ModelVersion.Status.READY)
    ModelVersion.objects.filter(pk=model.pk).update(size=1024**3)
    make_endpoint(owner, "priced", target=Endpoint.Target.SAGEMAKER, status=Endpoint.Status.LIVE, model_version=model)
    log_in(page, live_server.url, owner)
    go_to(page, "Endpoints")

    # bundled prices (moto has no Price List API): 1 x ml.m5.large 0.115/hour x 730 hours
    # = 83.95, plus 1 GB of model data x 0.023 = 83.973/month; / 730 = 0.1150/hour
    row = page.get_by_role("row", name="priced")
    expect(row).to_contain_text("0.1150 USD/hour, 83.97 USD/month")
    expect(page.locator("#cost-total")).to_contain_text("Your endpoints: 83.97 USD/month estimated (1 endpoint)")
    check_page(page, "endpoints-costs")


def test_stop_then_start_buttons_on_a_real_local_endpoint(
    page: Page,
    live_server: LiveServer,
    celery_worker: CeleryWorker,
    owner: User,
    iris_models: Path,
    nap_removed_afterwards: None,
) -> None:
    issued = endpoint_create(owner=owner, name=ENDPOINT, model_version=iris_version(owner, iris_models, "v1"))
    assert drive(issued.endpoint.current_deployment).status == Deployment.Status.SUCCEEDED  # type: ignore[arg-type]
    log_in(page, live_server.url, owner)
    page.goto(f"{live_server.url}/endpoints/{ENDPOINT}/")
    status = page.locator("#overview .badge").first

    page.get_by_role("button", name="Stop").click()
    expect(status).to_have_text("stopped", timeout=ROLLOUT_TIMEOUT)
    expect(page.get_by_role("button", name="Start")).to_be_visible()
    check_page(page, "endpoint-stopped")

    page.get_by_role("button", name="Start").click()
    expect(status).to_have_text("live", timeout=ROLLOUT_TIMEOUT)
    expect(page.get_by_role("button", name="Stop")).to_be_enabled()
    assert Endpoint.objects.get(name=ENDPOINT).status == Endpoint.Status.LIVE
    kinds = list(Deployment.objects.filter(endpoint__name=ENDPOINT).order_by("id").values_list("kind", flat=True))
    assert kinds == ["create", "stop", "start"]


def test_the_idle_warning_and_the_idle_stop_notice_with_its_start_button(
    page: Page, live_server: LiveServer, owner: User
) -> None:
    endpoint = live_endpoint(owner, options={"idle_stop_after": "30m"})
    Endpoint.objects.filter(pk=endpoint.pk).update(created_at=timezone.now() - timedelta(hours=3))
    line = LogLine.objects.create(
        endpoint=endpoint, source=LogLine.Source.RUNTIME, message="x POST /invocations 200 3 ms (queued 0 ms)"
    )
    LogLine.objects.filter(pk=line.pk).update(created_at=timezone.now() - timedelta(minutes=20))
    log_in(page, live_server.url, owner)
    page.goto(f"{live_server.url}/endpoints/iris/")
    expect(page.get_by_role("status").filter(has_text="it will be stopped at")).to_be_visible()
    check_page(page, "endpoint-idle-warning")

    assert endpoints_stop_idle(now=timezone.now() + timedelta(minutes=11)) == 1
    Deployment.objects.filter(endpoint=endpoint, kind=Deployment.Kind.STOP).update(status=Deployment.Status.SUCCEEDED)
    Endpoint.objects.filter(pk=endpoint.pk).update(status=Endpoint.Status.STOPPED)
    page.reload()
    expect(page.locator("#overview")).to_contain_text("stopped: idle since")
    expect(page.get_by_role("button", name="Start")).to_be_visible()
    check_page(page, "endpoint-stopped-idle")
