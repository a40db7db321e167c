"""Fault tests for stop and start (issue 14): the Celery worker is SIGKILLed inside a stop
step and inside start's steps (it says it is inside: testsupport.pipeline.kill_inside_step);
the reconciler its own beat runs resumes the deployment, the killed step runs again, and
exactly one runtime serves afterwards (none while stopped)."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.contrib.auth.models import User

from deployer.integrations.containers import runtimes
from deployer.models import Deployment, Endpoint, ExternalResource
from deployer.services import gateway
from deployer.services.endpoints import endpoint_create, endpoint_invoke, endpoint_start, endpoint_stop
from deployer.tests.pipeline_support import FaultyWorker, finish, iris_version
from testsupport.pipeline import kill_inside_step
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


@pytest.mark.parametrize("start_step", ["resume_runtime", "switch_traffic"])
def test_a_worker_killed_inside_stop_and_inside_start_still_stops_and_starts_once(
    owner: User, iris_models: Path, faulty_worker: FaultyWorker, start_step: str
) -> None:
    truth = expected(iris_models)
    issued = endpoint_create(owner=owner, name="tough-nap", model_version=iris_version(owner, iris_models, "v1"))
    assert finish(issued.endpoint.current_deployment).status == Deployment.Status.SUCCEEDED  # type: ignore[arg-type]

    stop = endpoint_stop(endpoint=issued.endpoint)
    kill_inside_step(faulty_worker, stop, "stop_runtime")
    stop = finish(stop)

    assert stop.status == Deployment.Status.SUCCEEDED, stop.error
    assert stop.steps.get(name="stop_runtime").attempts == 2
    endpoint = Endpoint.objects.get(name="tough-nap")
    assert endpoint.status == Endpoint.Status.STOPPED
    assert live_containers(endpoint) == []
    assert runtimes.names(endpoint="tough-nap") == []

    start = endpoint_start(endpoint=endpoint)
    kill_inside_step(faulty_worker, start, start_step)
    start = finish(start)

    assert start.status == Deployment.Status.SUCCEEDED, start.error
    assert start.steps.get(name=start_step).attempts == 2
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
