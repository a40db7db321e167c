"""A rollout step that fails after traffic switched to the new version rolls forward:
nothing that serves is discarded, and the endpoint says which step failed (review
finding 2). Real R runtimes on the local target, driven in this process."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.contrib.auth.models import User

from deployer.models import Deployment, Endpoint, ExternalResource
from deployer.services import gateway
from deployer.services.endpoints import endpoint_create, endpoint_delete, endpoint_invoke, endpoint_update
from deployer.targets.base import PermanentStepError, StepContext, StepOutcome
from deployer.targets.local import LocalTarget
from deployer.targets.local.paths import rollout_dir
from deployer.tests.pipeline_support import container_running, iris_version, stop_everything
from testsupport.pipeline import drive
from testsupport.r_models import expected, rows_csv

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def _no_runtime_outlives_its_test() -> Iterator[None]:
    yield
    stop_everything(list(Endpoint.objects.values_list("name", flat=True)))


def predictions(owner: User, name: str, body: bytes) -> list[str]:
    gateway._routes.clear()  # as a web process sees it once its cached route expired
    result = endpoint_invoke(user=owner, name=name, body=body, headers={"Content-Type": "text/csv"})
    assert result is not None
    assert result.status == 200, result.body
    return list(json.loads(result.body)["predictions"])


def test_an_update_failing_after_the_traffic_switch_keeps_the_new_version_live_and_says_what_failed(
    owner: User, iris_models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    truth = expected(iris_models)
    rows = rows_csv(truth["rows"])
    v1, v2 = iris_version(owner, iris_models, "v1"), iris_version(owner, iris_models, "v2")
    issued = endpoint_create(owner=owner, name="forward", model_version=v1)
    drive(issued.endpoint.current_deployment)  # type: ignore[arg-type]

    def stop_previous_fails(self: LocalTarget, ctx: StepContext) -> StepOutcome:
        raise PermanentStepError("The previous runtime would not stop.")

    monkeypatch.setitem(LocalTarget.STEPS, "stop_previous", stop_previous_fails)
    update = drive(endpoint_update(endpoint=issued.endpoint, model_version=v2))

    endpoint = Endpoint.objects.get(name="forward")
    assert endpoint.status == Endpoint.Status.LIVE
    assert endpoint.model_version == v2
    assert update.traffic_switched_at is not None
    assert update.status == Deployment.Status.SUCCEEDED
    assert "stop_previous" in update.error
    assert update.steps.get(name="stop_previous").status == "failed"
    assert endpoint.previous_model_version == v1
    assert "would not stop" in endpoint.error
    assert f"{v2} serves" in endpoint.error
    # What serves was not discarded: v2's container and model files are there and answer.
    assert (rollout_dir(update) / "model").is_dir()
    assert container_running(endpoint.runtime["container"])
    assert not ExternalResource.objects.filter(deployment=update, deleted_at__isnull=False).exists()
    assert predictions(owner, "forward", rows) == truth["v2"]

    # The next rollout stops what the failed step left running.
    monkeypatch.undo()
    again = drive(endpoint_update(endpoint=endpoint, model_version=v1))
    assert again.status == Deployment.Status.SUCCEEDED, again.error
    assert predictions(owner, "forward", rows) == truth["v1"]
    assert list(
        ExternalResource.objects.filter(
            endpoint=endpoint, deleted_at__isnull=True, kind=ExternalResource.Kind.CONTAINER
        )
    ) == list(ExternalResource.objects.filter(deployment=again, kind=ExternalResource.Kind.CONTAINER))
    assert Endpoint.objects.get(name="forward").error == ""
    deleted = endpoint_delete(endpoint=endpoint)
    assert deleted is not None
    drive(deleted)


def test_a_failure_before_the_switch_still_discards_the_rollout_and_the_old_version_serves(
    owner: User, iris_models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    truth = expected(iris_models)
    v1, v2 = iris_version(owner, iris_models, "v1"), iris_version(owner, iris_models, "v2")
    issued = endpoint_create(owner=owner, name="backward", model_version=v1)
    drive(issued.endpoint.current_deployment)  # type: ignore[arg-type]

    def smoke_test_fails(self: LocalTarget, ctx: StepContext) -> StepOutcome:
        raise PermanentStepError("The test prediction was wrong.")

    monkeypatch.setitem(LocalTarget.STEPS, "smoke_test", smoke_test_fails)
    update = drive(endpoint_update(endpoint=issued.endpoint, model_version=v2))

    assert update.status == Deployment.Status.FAILED
    assert update.traffic_switched_at is None
    endpoint = Endpoint.objects.get(name="backward")
    assert (endpoint.status, endpoint.model_version) == (Endpoint.Status.LIVE, v1)
    assert "still serves" in endpoint.error
    assert not (rollout_dir(update) / "model").exists()
    assert predictions(owner, "backward", rows_csv(truth["rows"])) == truth["v1"]


def test_sagemaker_updates_switch_traffic_when_the_endpoint_is_in_service_on_the_new_config() -> None:
    from deployer.targets import get_target

    sagemaker = get_target("sagemaker")
    for kind in (Deployment.Kind.UPDATE, Deployment.Kind.ROLLBACK):
        assert sagemaker.switches_traffic_at[kind] == "wait_in_service"
        assert "wait_in_service" in sagemaker.steps(kind, public=True)
    assert sagemaker.switches_traffic_at[Deployment.Kind.CREATE] == "switch_traffic"
