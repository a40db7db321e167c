"""A worker killed inside each step of a shadow's start, promote and end (issue 16: "a
worker killed in any shadow step is as safe as updates are today").

The worker (FaultyWorker: beat embedded, a short lease, a pause after each step's work)
is SIGKILLed inside the first run of every step in turn (kill_inside_step proves the
kill landed there: the worker logged that it was inside that step, and the step's row is
still running on its first attempt); its beat's reconciler resumes the deployment, never
the test. Afterwards each step ran exactly twice, one runtime per version exists, and the
endpoint serves the version it should. And PostgreSQL restarted under a gunicorn whose
copy senders are storing pairs: none is lost after it."""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection, connections

from deployer.models import Deployment, DeploymentStep, Endpoint, ExternalResource, Shadow
from deployer.services import gateway
from deployer.services.endpoints import endpoint_create, endpoint_invoke
from deployer.services.shadows import shadow_end, shadow_promote, shadow_start
from deployer.services.tokens import api_token_create
from deployer.targets.local import LocalTarget
from deployer.tests.pipeline_support import FaultyWorker, finish, iris_version, running_containers
from deployer.tests.test_fault_recovery import session_postgres
from testsupport.pipeline import kill_inside_step
from testsupport.r_models import expected, rows_csv
from testsupport.services import WebServer, session_database_url
from testsupport.traffic import Plan, Request, TrafficClients
from testsupport.waiting import wait_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("no_runtime_outlives_the_test"),
]


def steps_of(kind: str) -> list[str]:
    return LocalTarget().steps(kind, public=False)


def killed_in_every_step(worker: FaultyWorker, deployment: Deployment) -> Deployment:
    """Kill the worker inside each step of ``deployment`` in turn; the deployment once done."""
    for step in steps_of(deployment.kind):
        kill_inside_step(worker, deployment, step)
    done = finish(deployment)
    assert done.status == Deployment.Status.SUCCEEDED, done.error
    attempts = dict(done.steps.values_list("name", "attempts"))
    assert attempts == dict.fromkeys(steps_of(deployment.kind), 2)
    assert set(done.steps.values_list("status", flat=True)) <= {
        DeploymentStep.Status.SUCCEEDED,
        DeploymentStep.Status.SKIPPED,
    }
    return done


def live_v1(owner: User, iris_models: Path, name: str) -> Endpoint:
    issued = endpoint_create(owner=owner, name=name, model_version=iris_version(owner, iris_models, "v1"))
    created = finish(issued.endpoint.current_deployment)  # type: ignore[arg-type]
    assert created.status == Deployment.Status.SUCCEEDED, created.error
    return Endpoint.objects.get(name=name)


def answers(owner: User, name: str, truth: dict[str, Any]) -> list[str]:
    gateway._routes.clear()
    result = endpoint_invoke(user=owner, name=name, body=rows_csv(truth["rows"]), headers={"Content-Type": "text/csv"})
    assert result is not None
    assert result.status == 200, result.body
    return list(json.loads(result.body)["predictions"])


def test_a_worker_killed_inside_every_shadow_step_and_every_promote_step_leaves_one_runtime_serving_v2(
    owner: User, iris_models: Path, faulty_worker: FaultyWorker
) -> None:
    truth = expected(iris_models)
    endpoint = live_v1(owner, iris_models, "restless")
    live_container = endpoint.runtime["container"]
    shadow = shadow_start(
        endpoint=endpoint, model_version=iris_version(owner, iris_models, "v2"), sample_percent=100, duration="2h"
    )

    killed_in_every_step(faulty_worker, shadow.deployment)

    shadow.refresh_from_db()
    assert shadow.status == Shadow.Status.RUNNING
    shadow_containers = ExternalResource.objects.live().filter(
        deployment=shadow.deployment, kind=ExternalResource.Kind.CONTAINER
    )
    assert shadow_containers.count() == 1
    shadow_container = shadow_containers.get().identifier
    assert sorted(running_containers("restless")) == sorted([live_container, shadow_container])
    endpoint.refresh_from_db()
    assert (endpoint.status, endpoint.error, endpoint.runtime["container"]) == ("live", "", live_container)
    assert endpoint.shadow_runtime["runtime"]["container"] == shadow_container
    assert answers(owner, "restless", truth) == truth["v1"]

    promote = killed_in_every_step(faulty_worker, shadow_promote(endpoint=endpoint))

    shadow.refresh_from_db()
    assert shadow.status == Shadow.Status.PROMOTED
    endpoint.refresh_from_db()
    assert (endpoint.status, endpoint.error, endpoint.model_version) == ("live", "", promote.model_version)
    assert (endpoint.runtime["container"], endpoint.shadow_runtime) == (shadow_container, {})
    assert running_containers("restless") == [shadow_container]
    assert ExternalResource.objects.live().filter(endpoint=endpoint, kind=ExternalResource.Kind.CONTAINER).count() == 1
    assert answers(owner, "restless", truth) == truth["v2"]


def test_a_worker_killed_inside_every_end_shadow_step_leaves_v1_untouched_and_no_shadow_runtime(
    owner: User, iris_models: Path, faulty_worker: FaultyWorker
) -> None:
    truth = expected(iris_models)
    endpoint = live_v1(owner, iris_models, "calm")
    live_container = endpoint.runtime["container"]
    shadow = shadow_start(
        endpoint=endpoint, model_version=iris_version(owner, iris_models, "v2"), sample_percent=100, duration="2h"
    )
    assert finish(shadow.deployment).status == Deployment.Status.SUCCEEDED

    killed_in_every_step(faulty_worker, shadow_end(endpoint=endpoint))

    shadow.refresh_from_db()
    assert shadow.status == Shadow.Status.ENDED
    endpoint.refresh_from_db()
    assert (endpoint.status, endpoint.error, endpoint.runtime["container"]) == ("live", "", live_container)
    assert endpoint.shadow_runtime == {}
    assert running_containers("calm") == [live_container]
    assert not ExternalResource.objects.live().filter(deployment=shadow.deployment).exists()
    assert answers(owner, "calm", truth) == truth["v1"]


def postmaster_start() -> datetime:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_postmaster_start_time()")
        started: datetime = cursor.fetchone()[0]
    return started


def copied_calls(web: WebServer, plan: Plan, shadow: Shadow, *, ok_before: int, count: int) -> int:
    """``count`` answered calls at least; once each one's copy is stored, the answered
    calls in all (``ok_before`` and these)."""
    with TrafficClients(web.port, 2, plan, keep_alive=False) as traffic:
        wait_for(lambda: sum(call.ok for call in traffic.calls) >= count, what=f"{count} answered calls")
    answered = ok_before + sum(call.ok for call in traffic.stop())
    wait_for(
        lambda: sum(Shadow.objects.filter(pk=shadow.pk).values_list("copies_sent", "copies_dropped").get()) >= answered,
        what="every answered call's copy",
    )
    shadow.refresh_from_db()
    assert (shadow.copies_sent, shadow.copies_dropped) == (answered, 0)
    assert shadow.pairs.count() == answered
    return answered


@pytest.mark.skipif(
    os.environ.get("RDEPLOY_TEST_DATABASE") != "postgres", reason="restarts the session's PostgreSQL cluster"
)
def test_the_copy_senders_of_a_gunicorn_store_every_pair_again_after_postgresql_restarted(
    owner: User, iris_models: Path, faulty_worker: FaultyWorker, tmp_path: Path
) -> None:
    truth = expected(iris_models)
    endpoint = live_v1(owner, iris_models, "steadfast")
    shadow = shadow_start(
        endpoint=endpoint, model_version=iris_version(owner, iris_models, "v2"), sample_percent=100, duration="2h"
    )
    assert finish(shadow.deployment).status == Deployment.Status.SUCCEEDED
    headers = {"Content-Type": "text/csv", "Authorization": f"Token {api_token_create(user=owner).secret}"}
    call = Request("call", "POST", "/api/v1/endpoints/steadfast/invocations", rows_csv(truth["rows"]), headers)
    web = WebServer(session_database_url(), tmp_path / "web.log", workers=2, threads=2)
    web.start()
    try:
        answered = copied_calls(web, lambda client, sequence: call, shadow, ok_before=0, count=20)
        started = postmaster_start()
        server = session_postgres()
        server.stop()  # every connection is cut: the senders' and the web threads'
        server.start()
        connections.close_all()  # this process's, cut too
        assert postmaster_start() > started

        copied_calls(web, lambda client, sequence: call, shadow, ok_before=answered, count=20)
    finally:
        web.stop()
    assert {pair.shadow_output == truth["v2"] for pair in shadow.pairs.all()} == {True}
