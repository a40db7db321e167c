"""Idle stop of a SageMaker endpoint judged by CloudWatch's Invocations (issue 14), on moto:
the metric summed over the idle window, not copied log lines."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from deployer.integrations.aws.client import aws_client
from deployer.models import Deployment, Endpoint, LogLine
from deployer.services.endpoints import endpoint_idle_stop_notice, endpoints_stop_idle
from testsupport.factories import make_endpoint, make_model_version
from testsupport.moto import MotoServer

pytestmark = pytest.mark.django_db


def sagemaker_endpoint(owner: User, name: str) -> Endpoint:
    version = make_model_version(owner, name=name, status="ready")
    endpoint = make_endpoint(
        owner,
        name,
        target=Endpoint.Target.SAGEMAKER,
        status=Endpoint.Status.LIVE,
        model_version=version,
        options={"idle_stop_after": "2h"},
        runtime={"endpoint_name": f"rdeploy-{name}", "variant": "AllTraffic", "region": "us-east-1"},
    )
    Endpoint.objects.filter(pk=endpoint.pk).update(created_at=timezone.now() - timedelta(days=2))
    endpoint.refresh_from_db()
    return endpoint


def invoked(name: str, ago: timedelta, count: int) -> None:
    dimensions = [{"Name": "EndpointName", "Value": f"rdeploy-{name}"}, {"Name": "VariantName", "Value": "AllTraffic"}]
    aws_client("cloudwatch").put_metric_data(
        Namespace="AWS/SageMaker",
        MetricData=[
            {"MetricName": "Invocations", "Dimensions": dimensions, "Timestamp": timezone.now() - ago, "Value": count}
        ],
    )


def test_a_sagemaker_endpoint_is_stopped_when_cloudwatch_counts_no_invocation_in_its_period(
    aws: MotoServer, owner: User
) -> None:
    idle = sagemaker_endpoint(owner, "idle")
    called = sagemaker_endpoint(owner, "called")
    invoked("idle", timedelta(hours=3), 5)
    invoked("called", timedelta(hours=1, minutes=5), 5)
    # A zero sum is no invocation; an access line copied into the log no longer counts.
    invoked("idle", timedelta(minutes=30), 0)
    LogLine.objects.create(endpoint=idle, source=LogLine.Source.ENDPOINT, message="x POST /invocations 200 3 ms")

    assert endpoints_stop_idle() == 1

    assert Endpoint.objects.get(pk=idle.pk).status == Endpoint.Status.STOPPING
    assert Endpoint.objects.get(pk=called.pk).status == Endpoint.Status.LIVE
    stop = Deployment.objects.get(endpoint=idle, kind=Deployment.Kind.STOP)
    # Idle since the end of the metric period (2 minutes over a 2-day window) of its last
    # invocation, three hours ago.
    idle_since = stop.idle_since
    assert idle_since is not None
    assert timedelta(hours=2, minutes=55) <= timezone.now() - idle_since <= timedelta(hours=3)
    # The called one is warned: more than half its 2h period has passed since its last invocation.
    notice = endpoint_idle_stop_notice(called)
    assert notice is not None
    assert timedelta(minutes=53) <= notice.stops_at - timezone.now() <= timedelta(minutes=58)


def test_a_sagemaker_endpoint_cloudwatch_cannot_judge_is_left_running(owner: User, settings: Any) -> None:
    endpoint = sagemaker_endpoint(owner, "unjudged")
    # CloudWatch unreachable (nothing listens on port 9): unknown traffic stops nothing.
    settings.AWS_ENDPOINT_URL, settings.AWS_MAX_ATTEMPTS = "http://127.0.0.1:9", 1
    assert endpoints_stop_idle() == 0
    assert Endpoint.objects.get(pk=endpoint.pk).status == Endpoint.Status.LIVE
    assert endpoint_idle_stop_notice(endpoint) is None
