"""Idle stop of a real local endpoint (issue 14): real invocations through the gateway
reach the runtime, its access lines are collected into the endpoint's log, and the
reconciler's service runs on a fake clock (its ``now``), so nothing sleeps for the period."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.db.models import Max

from deployer.integrations.containers import runtimes
from deployer.models import Deployment, Endpoint, LogLine
from deployer.services.endpoints import endpoint_create, endpoint_invoke, endpoints_stop_idle
from deployer.targets import get_target
from deployer.tests.pipeline_support import iris_version
from testsupport.pipeline import drive
from testsupport.r_models import expected, rows_csv
from testsupport.waiting import wait_for

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("fresh_gateway_routes", "no_runtime_outlives_the_test"),
    pytest.mark.slow,
]


def access_lines(endpoint: Endpoint) -> int:
    get_target(endpoint.target).collect_logs(endpoint)
    return LogLine.objects.filter(
        endpoint=endpoint, source=LogLine.Source.RUNTIME, message__contains="POST /invocations"
    ).count()


def test_a_local_endpoint_is_stopped_30_minutes_after_its_last_real_invocation(owner: User, iris_models: Path) -> None:
    truth = expected(iris_models)
    issued = endpoint_create(
        owner=owner,
        name="dozy",
        model_version=iris_version(owner, iris_models, "v1"),
        options={"idle_stop_after": "30m"},
    )
    create = drive(issued.endpoint.current_deployment)  # type: ignore[arg-type]
    assert create.status == Deployment.Status.SUCCEEDED, create.error
    endpoint = Endpoint.objects.get(name="dozy")
    before = access_lines(endpoint)

    for _ in range(2):
        result = endpoint_invoke(
            user=owner, name="dozy", body=rows_csv(truth["rows"]), headers={"Content-Type": "text/csv"}
        )
        assert result is not None
        assert result.status == 200
    wait_for(lambda: access_lines(endpoint) >= before + 2, what="the runtime's access lines")
    last_call = LogLine.objects.filter(endpoint=endpoint, message__contains="POST /invocations").aggregate(
        at=Max("created_at")
    )["at"]
    assert last_call > create.finished_at

    # 29 minutes 59 seconds after the last call: still live.
    assert endpoints_stop_idle(now=last_call + timedelta(minutes=30, seconds=-1)) == 0
    assert Endpoint.objects.get(pk=endpoint.pk).status == Endpoint.Status.LIVE
    # 30 minutes after it: stopped, and the stop says since when.
    assert endpoints_stop_idle(now=last_call + timedelta(minutes=30)) == 1
    stop = Deployment.objects.get(endpoint=endpoint, kind=Deployment.Kind.STOP)
    assert stop.idle_since == last_call
    assert drive(stop).status == Deployment.Status.SUCCEEDED, stop.error
    assert Endpoint.objects.get(pk=endpoint.pk).status == Endpoint.Status.STOPPED
    assert runtimes.names(endpoint="dozy") == []
