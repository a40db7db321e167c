"""Fault tests for stop and start (issue 14): the Celery worker is SIGKILLed inside the stop
step and inside each of start's steps (it says it is inside: testsupport.pipeline.kill_inside_step);
the reconciler its own beat runs resumes the deployment, the killed step runs again in the
restarted worker, and exactly one runtime serves afterwards (none while stopped)."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.contrib.auth.models import User

from deployer.integrations.containers import runtimes
from deployer.models import Deployment, Endpoint, ExternalResource
from deployer.services import gateway
from deployer.services.endpoints import endpoint_create, endpoint_invoke, endpoint_start, endpoint_stop
from deployer.tests.pipeline_support import FaultyWorker, finish, iris_version
from testsupport.pipeline import kill_inside_step, reconciled
from testsupport.r_models import expected, rows_csv

pytestmark = [
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("fresh_gateway_routes", "no_runtime_outlives_the_test"),
]


def live_containers(endpoint: Endpoint) -> list[str]:
    return sorted(
        ExternalResource.objects.live()
        .of_endpoint(endpoint, ExternalResource.Kind.CONTAINER)
        .values_list("identifier", flat=True)
    )


def kill_and_see_the_step_rerun(worker: FaultyWorker, deployment: Deployment, step: str) -> Deployment:
    """Kill ``worker`` inside ``step``'s first run and wait for the deployment to finish;
    asserts the step's second run was the restarted worker's, after its beat's reconciler ran."""
    assert worker.process is not None
    killed = worker.process.pid
    kill_inside_step(worker, deployment, step)
    assert worker.process.pid != killed
    deployment = finish(deployment)
    rerun = f"fault pause: deployment {deployment.pk} step {step} attempt 2 run pid {worker.process.pid}\n"
    assert rerun in worker.logfile.read_bytes()[worker.logged :].decode(errors="replace")
    assert reconciled(worker, since=worker.logged) >= 1
    assert deployment.steps.get(name=step).attempts == 2
    return deployment


@pytest.mark.parametrize("start_step", ["resume_runtime", "wait_healthy", "smoke_test", "switch_traffic"])
def test_a_worker_killed_inside_stop_and_inside_start_still_stops_and_starts_once(
    owner: User, iris_models: Path, faulty_worker: FaultyWorker, start_step: str
) -> None:
    truth = expected(iris_models)
    issued = endpoint_create(owner=owner, name="tough-nap", model_version=iris_version(owner, iris_models, "v1"))
    assert finish(issued.endpoint.current_deployment).status == Deployment.Status.SUCCEEDED  # type: ignore[arg-type]

    stop = kill_and_see_the_step_rerun(faulty_worker, endpoint_stop(endpoint=issued.endpoint), "stop_runtime")

    assert stop.status == Deployment.Status.SUCCEEDED, stop.error
    endpoint = Endpoint.objects.get(name="tough-nap")
    assert endpoint.status == Endpoint.Status.STOPPED
    assert live_containers(endpoint) == []
    assert runtimes.names(endpoint="tough-nap") == []

    start = kill_and_see_the_step_rerun(faulty_worker, endpoint_start(endpoint=endpoint), start_step)

    assert start.status == Deployment.Status.SUCCEEDED, start.error
    endpoint.refresh_from_db()
    assert endpoint.status == Endpoint.Status.LIVE
    # One runtime: the killed run's container was found again, not started twice.
    assert live_containers(endpoint) == [endpoint.runtime["container"]]
    assert runtimes.names(endpoint="tough-nap") == [endpoint.runtime["container"]]
    gateway._routes.clear()
    result = endpoint_invoke(
        user=owner, name="tough-nap", body=rows_csv(truth["rows"]), headers={"Content-Type": "text/csv"}
    )
    assert result is not None
    assert (result.status, truth["v1"][0] in result.body.decode()) == (200, True)
