"""Fault tests: SIGKILL the Celery worker inside each step (the worker says it is inside:
testsupport.pipeline.kill_inside_step), restart it, and the deployment completes with
nothing left behind, the killed step having run a second time (steps are idempotent). The
test never resumes anything: the worker's own Celery beat runs the reconciler on its
schedule, which resumes the deployment once the dead worker's lease expires. Also: the
reconciler brings a killed runtime back."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.contrib.auth.models import User

from deployer.integrations.containers import runtimes
from deployer.models import Deployment, Endpoint, ExternalResource
from deployer.services import gateway
from deployer.services.endpoints import (
    endpoint_create,
    endpoint_delete,
    endpoint_invoke,
    endpoint_rollback,
    endpoint_update,
)
from deployer.targets import get_target
from deployer.targets.local.paths import endpoint_dir
from deployer.tests.pipeline_support import (
    FaultyWorker,
    finish,
    iris_version,
    kill_runtime,
    running_containers,
)
from testsupport.pipeline import kill_inside_step, reconciled
from testsupport.r_models import expected, rows_csv
from testsupport.waiting import wait_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("fresh_gateway_routes", "no_runtime_outlives_the_test"),
]


def ran_twice(deployment: Deployment, step: str) -> bool:
    """The killed run and the one the reconciler resumed: the kill hit the step."""
    return deployment.steps.get(name=step).attempts == 2


def live_containers(endpoint: Endpoint) -> list[str]:
    return sorted(
        resource.identifier
        for resource in ExternalResource.objects.filter(
            endpoint=endpoint, kind=ExternalResource.Kind.CONTAINER, deleted_at__isnull=True
        )
    )


def test_a_worker_killed_in_any_step_of_an_update_leaves_an_update_that_completes(
    owner: User, iris_models: Path, faulty_worker: FaultyWorker
) -> None:
    truth = expected(iris_models)
    versions = {"v1": iris_version(owner, iris_models, "v1"), "v2": iris_version(owner, iris_models, "v2")}
    issued = endpoint_create(owner=owner, name="tough", model_version=versions["v1"])
    assert finish(issued.endpoint.current_deployment).status == Deployment.Status.SUCCEEDED  # type: ignore[arg-type]
    current = "v1"

    for step in get_target("local").steps(Deployment.Kind.UPDATE, public=False):
        new = "v2" if current == "v1" else "v1"
        update = endpoint_update(endpoint=issued.endpoint, model_version=versions[new])
        kill_inside_step(faulty_worker, update, step)

        update = finish(update)

        assert update.status == Deployment.Status.SUCCEEDED, f"killed in {step}: {update.error}"
        assert ran_twice(update, step), f"killed in {step}"
        endpoint = Endpoint.objects.get(name="tough")
        assert endpoint.status == Endpoint.Status.LIVE
        assert endpoint.model_version == versions[new]
        gateway._routes.clear()
        result = endpoint_invoke(
            user=owner, name="tough", body=rows_csv(truth["rows"]), headers={"Content-Type": "text/csv"}
        )
        assert result is not None
        assert result.status == 200, f"killed in {step}: {result.body!r}"
        assert truth[new][0] in result.body.decode()
        # One runtime serves; the previous one and any half-started one are gone.
        assert live_containers(endpoint) == [endpoint.runtime["container"]], f"killed in {step}"
        assert runtimes.names(endpoint="tough") == [endpoint.runtime["container"]], f"killed in {step}"
        current = new


def test_a_worker_killed_in_a_rollback_leaves_the_previous_version_serving(
    owner: User, iris_models: Path, faulty_worker: FaultyWorker
) -> None:
    truth = expected(iris_models)
    v1, v2 = iris_version(owner, iris_models, "v1"), iris_version(owner, iris_models, "v2")
    issued = endpoint_create(owner=owner, name="undo", model_version=v1)
    assert finish(issued.endpoint.current_deployment).status == Deployment.Status.SUCCEEDED  # type: ignore[arg-type]
    assert finish(endpoint_update(endpoint=issued.endpoint, model_version=v2)).status == Deployment.Status.SUCCEEDED

    rollback = endpoint_rollback(endpoint=Endpoint.objects.get(name="undo"))
    assert rollback.kind == Deployment.Kind.ROLLBACK
    kill_inside_step(faulty_worker, rollback, "start_runtime")
    rollback = finish(rollback)

    assert rollback.status == Deployment.Status.SUCCEEDED, rollback.error
    assert ran_twice(rollback, "start_runtime")
    endpoint = Endpoint.objects.get(name="undo")
    assert (endpoint.status, endpoint.model_version, endpoint.previous_model_version) == (Endpoint.Status.LIVE, v1, v2)
    gateway._routes.clear()
    result = endpoint_invoke(
        user=owner, name="undo", body=rows_csv(truth["rows"]), headers={"Content-Type": "text/csv"}
    )
    assert result is not None
    assert (result.status, truth["v1"][0] in result.body.decode()) == (200, True)
    # One runtime serves: v2's and any half-started one are gone.
    assert live_containers(endpoint) == [endpoint.runtime["container"]]
    assert runtimes.names(endpoint="undo") == [endpoint.runtime["container"]]


@pytest.mark.parametrize(
    ("create_step", "delete_step"), [("prepare_model_dir", "stop_runtime"), ("start_runtime", "remove_files")]
)
def test_a_worker_killed_during_create_and_during_delete_still_finishes_both(
    owner: User, iris_models: Path, faulty_worker: FaultyWorker, create_step: str, delete_step: str
) -> None:
    issued = endpoint_create(owner=owner, name="cycle", model_version=iris_version(owner, iris_models, "v1"))
    create = issued.endpoint.current_deployment
    assert create is not None
    kill_inside_step(faulty_worker, create, create_step)
    assert finish(create).status == Deployment.Status.SUCCEEDED
    assert ran_twice(create, create_step)

    deletion = endpoint_delete(endpoint=issued.endpoint)
    assert deletion is not None
    kill_inside_step(faulty_worker, deletion, delete_step)

    assert finish(deletion).status == Deployment.Status.SUCCEEDED
    assert ran_twice(deletion, delete_step)
    assert Endpoint.objects.get(name="cycle").status == Endpoint.Status.DELETED
    assert runtimes.names(endpoint="cycle") == []
    assert not endpoint_dir("cycle").exists()
    assert not ExternalResource.objects.filter(endpoint__name="cycle", deleted_at__isnull=True).exists()


def test_a_runtime_killed_while_the_worker_is_down_comes_back(
    owner: User, iris_models: Path, faulty_worker: FaultyWorker
) -> None:
    truth = expected(iris_models)
    issued = endpoint_create(owner=owner, name="lazarus", model_version=iris_version(owner, iris_models, "v1"))
    assert finish(issued.endpoint.current_deployment).status == Deployment.Status.SUCCEEDED  # type: ignore[arg-type]
    runtime = Endpoint.objects.get(name="lazarus").runtime
    faulty_worker.kill()
    kill_runtime(runtime["container"])
    faulty_worker.start()

    # Nothing else restarts it: the reconciler beat runs sees the runtime dead.
    def answers() -> bool:
        gateway._routes.clear()
        result = endpoint_invoke(
            user=owner, name="lazarus", body=rows_csv(truth["rows"]), headers={"Content-Type": "text/csv"}
        )
        return result is not None and result.status == 200

    wait_for(answers, timeout=60, what="the restarted runtime")


def test_a_runtime_outlives_a_worker_restart(owner: User, iris_models: Path, faulty_worker: FaultyWorker) -> None:
    truth = expected(iris_models)
    issued = endpoint_create(owner=owner, name="steadfast", model_version=iris_version(owner, iris_models, "v1"))
    assert finish(issued.endpoint.current_deployment).status == Deployment.Status.SUCCEEDED  # type: ignore[arg-type]
    runtime = Endpoint.objects.get(name="steadfast").runtime

    faulty_worker.kill()
    logged = faulty_worker.logfile.stat().st_size
    faulty_worker.start()
    wait_for(lambda: reconciled(faulty_worker, since=logged) >= 2, what="two reconciler runs by beat")

    # The same container serves on, never restarted.
    assert running_containers("steadfast") == [runtime["container"]]
    assert Endpoint.objects.get(name="steadfast").runtime == runtime
    assert "crashes" not in ExternalResource.objects.get(identifier=runtime["container"]).details
    gateway._routes.clear()
    result = endpoint_invoke(
        user=owner, name="steadfast", body=rows_csv(truth["rows"]), headers={"Content-Type": "text/csv"}
    )
    assert result is not None
    assert (result.status, truth["v1"][0] in result.body.decode()) == (200, True)
