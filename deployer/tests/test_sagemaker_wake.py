"""``wake_on_request`` through a SageMaker endpoint's own public URL (issue 14), on moto.

API Gateway -> Lambda cannot reach rdeploy: the Lambda answers a stopped endpoint 503, API
Gateway counts that answer in its ``5XXError`` metric, and the reconciler's task starts the
endpoint when the metric counts calls since it stopped. moto's API Gateway publishes no
metrics, so each test puts the datapoint AWS would have written for such calls
(``put_metric_data``); everything else (the Lambda's answer, the reconciler, the start) is
rdeploy's own code on moto."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from deployer.integrations.aws.client import aws_client
from deployer.models import Deployment, Endpoint, ExternalResource, LogLine
from deployer.services import endpoints
from deployer.targets.sagemaker.names import STAGE
from deployer.tests.sagemaker_support import create_public, drive, latest, named
from deployer.tests.test_sagemaker_stop import deployed_lambda, invoke_lambda
from tasks.pipeline import pipeline_reconcile_task
from testsupport.moto import MotoServer
from testsupport.sagemaker_runtime import endpoint_checking_runtime

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fresh_gateway_routes")]


def stopped_ten_minutes_ago(owner: User, api_client_for: Any, **options: Any) -> tuple[Endpoint, datetime]:
    """A public SageMaker endpoint, created and stopped; returns it and when it stopped,
    moved ten minutes (and 30 s into a minute) back so the test's datapoints lie in the past."""
    create_public(owner, api_client_for, **options)
    assert drive(latest("iris-sm")).status == Deployment.Status.SUCCEEDED
    assert api_client_for(owner).post("/api/v1/endpoints/iris-sm/stop").status_code == 202
    assert drive(latest("iris-sm")).status == Deployment.Status.SUCCEEDED
    stopped_at = timezone.now().replace(second=30, microsecond=0) - timedelta(minutes=10)
    Deployment.objects.filter(endpoint__name="iris-sm").update(finished_at=stopped_at)
    endpoint = Endpoint.objects.get(name="iris-sm")
    assert endpoint.status == Endpoint.Status.STOPPED
    return endpoint, stopped_at


def api_answered_5xx(endpoint: Endpoint, at: datetime, calls: int) -> None:
    """The datapoint API Gateway writes for ``calls`` answered 5xx in the minute of ``at``."""
    api = ExternalResource.objects.live().of_endpoint(endpoint, ExternalResource.Kind.APIGATEWAY_REST_API).get()
    aws_client("cloudwatch").put_metric_data(
        Namespace="AWS/ApiGateway",
        MetricData=[
            {
                "MetricName": "5XXError",
                "Dimensions": [{"Name": "ApiName", "Value": api.identifier}, {"Name": "Stage", "Value": STAGE}],
                "Timestamp": at.replace(second=0),
                "Value": calls,
                "Unit": "Count",
            }
        ],
    )


@pytest.fixture
def metric_reads() -> Any:
    """The GetMetricStatistics calls rdeploy makes (a list of their namespaces)."""
    reads: list[str] = []
    events = aws_client("cloudwatch").meta.events

    def count(params: dict[str, Any], **_: Any) -> None:
        reads.append(params["Namespace"])

    events.register("provide-client-params.cloudwatch.GetMetricStatistics", count, unique_id="count-reads")
    yield reads
    events.unregister("provide-client-params.cloudwatch.GetMetricStatistics", unique_id="count-reads")


def starts(endpoint: Endpoint) -> int:
    return Deployment.objects.filter(endpoint=endpoint, kind=Deployment.Kind.START).count()


def test_a_call_to_a_stopped_public_endpoints_api_after_the_stop_starts_it_once(
    aws: MotoServer, owner: User, api_client_for: Any, monkeypatch: pytest.MonkeyPatch, metric_reads: list[str]
) -> None:
    endpoint, stopped_at = stopped_ten_minutes_ago(owner, api_client_for, wake_on_request=True)
    # What the caller of the public URL gets meanwhile, from the Lambda rdeploy deployed.
    with endpoint_checking_runtime(aws.url) as runtime:
        monkeypatch.setenv("AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", runtime.url)
        answer = invoke_lambda(deployed_lambda(named("iris-sm"), monkeypatch))
    assert (answer["statusCode"], answer["headers"]["Retry-After"]) == (503, "60")
    assert json.loads(answer["body"])["message"] == (
        "Endpoint iris-sm is stopped and is being started; this takes several minutes."
    )
    # Every reconciler run may ask CloudWatch (as if its 5 minutes had passed between runs).
    monkeypatch.setattr(endpoints, "IDLE_METRICS_CHECK_SECONDS", 0)

    # No call yet, then calls before the stop and in the stop's own minute (which may hold
    # answers from before it): it stays stopped.
    assert pipeline_reconcile_task()["woken"] == 0
    api_answered_5xx(endpoint, stopped_at - timedelta(minutes=3), 4)
    api_answered_5xx(endpoint, stopped_at, 2)
    assert pipeline_reconcile_task()["woken"] == 0
    assert Endpoint.objects.get(pk=endpoint.pk).status == Endpoint.Status.STOPPED
    assert starts(endpoint) == 0

    api_answered_5xx(endpoint, stopped_at + timedelta(minutes=1), 1)
    first = pipeline_reconcile_task()
    second = pipeline_reconcile_task()

    assert (first["woken"], second["woken"]) == (1, 0)
    assert starts(endpoint) == 1
    assert Endpoint.objects.get(pk=endpoint.pk).status == Endpoint.Status.STARTING
    assert LogLine.objects.filter(
        endpoint=endpoint, message__contains="answered 1 call(s) while it was stopped (wake_on_request)"
    ).exists()
    assert drive(latest("iris-sm")).status == Deployment.Status.SUCCEEDED
    assert Endpoint.objects.get(pk=endpoint.pk).status == Endpoint.Status.LIVE
    # A live endpoint's API calls are not counted (each question is billed), however long
    # it has been live.
    Deployment.objects.filter(endpoint=endpoint).update(finished_at=stopped_at + timedelta(minutes=5))
    metric_reads.clear()
    assert pipeline_reconcile_task()["woken"] == 0
    assert "AWS/ApiGateway" not in metric_reads

    # Stopped again: the call that woke it was before this stop and starts nothing.
    endpoints.endpoint_stop(endpoint=endpoint)
    assert drive(latest("iris-sm")).status == Deployment.Status.SUCCEEDED
    assert pipeline_reconcile_task()["woken"] == 0
    assert Endpoint.objects.get(pk=endpoint.pk).status == Endpoint.Status.STOPPED
    assert starts(endpoint) == 1


def test_calls_to_a_stopped_public_endpoint_without_wake_on_request_start_nothing(
    aws: MotoServer, owner: User, api_client_for: Any, monkeypatch: pytest.MonkeyPatch, metric_reads: list[str]
) -> None:
    endpoint, stopped_at = stopped_ten_minutes_ago(owner, api_client_for)
    with endpoint_checking_runtime(aws.url) as runtime:
        monkeypatch.setenv("AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", runtime.url)
        answer = invoke_lambda(deployed_lambda(named("iris-sm"), monkeypatch))
    api_answered_5xx(endpoint, stopped_at + timedelta(minutes=1), 3)

    assert pipeline_reconcile_task()["woken"] == 0

    assert json.loads(answer["body"])["message"] == "Endpoint iris-sm is stopped; its owner can start it."
    assert Endpoint.objects.get(pk=endpoint.pk).status == Endpoint.Status.STOPPED
    assert starts(endpoint) == 0
    assert "AWS/ApiGateway" not in metric_reads


def test_cloudwatch_is_asked_about_a_stopped_endpoint_once_per_check_period(
    aws: MotoServer, owner: User, api_client_for: Any, metric_reads: list[str]
) -> None:
    endpoint, stopped_at = stopped_ten_minutes_ago(owner, api_client_for, wake_on_request=True)

    assert pipeline_reconcile_task()["woken"] == 0
    api_answered_5xx(endpoint, stopped_at + timedelta(minutes=1), 1)
    # Within IDLE_METRICS_CHECK_SECONDS of the first question: not asked again, so the call
    # waits for the next period (each GetMetricStatistics is billed).
    assert pipeline_reconcile_task()["woken"] == 0

    assert metric_reads.count("AWS/ApiGateway") == 1
    assert Endpoint.objects.get(pk=endpoint.pk).status == Endpoint.Status.STOPPED


def test_a_stopped_endpoint_cloudwatch_cannot_judge_stays_stopped(
    aws: MotoServer, owner: User, api_client_for: Any, settings: Any
) -> None:
    endpoint, stopped_at = stopped_ten_minutes_ago(owner, api_client_for, wake_on_request=True)
    api_answered_5xx(endpoint, stopped_at + timedelta(minutes=1), 1)
    # CloudWatch unreachable (nothing listens on port 9): no answer is no call.
    settings.AWS_ENDPOINT_URL, settings.AWS_MAX_ATTEMPTS = "http://127.0.0.1:9", 1

    assert endpoints.endpoints_wake_called() == 0

    assert Endpoint.objects.get(pk=endpoint.pk).status == Endpoint.Status.STOPPED
    assert starts(endpoint) == 0
