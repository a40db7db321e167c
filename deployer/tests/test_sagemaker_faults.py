"""Fault tests for the SageMaker target against moto: the worker dying at every AWS call of
every step, then the step running again from the top (what the pipeline does once the dead
worker's lease expires), must create no duplicate and leave nothing behind on delete.

The death is injected as an exception no code catches, raised by a botocore
``before-call`` hook at the n-th AWS call, for n = 1, 2, ... until the step completes
without reaching it: every point at which a step talks to AWS is a kill point.

moto lacks ``UpdateEndpoint``: the update runs under ``EndpointUpdates``
(testsupport/moto.py), registered after the kill hook, so the update call is a kill
point like any other.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.contrib.auth.models import User

from deployer.integrations.aws.client import aws_client
from deployer.models import Deployment, DeploymentStep, ExternalResource
from deployer.services.pipeline import serving_deployment
from deployer.targets import get_target
from deployer.targets.base import StepContext, StepOutcome
from deployer.tests.sagemaker_support import (
    ONE_PUBLIC_ENDPOINT,
    counts,
    create_public,
    drive,
    latest,
    push_image,
    stub_model,
    tagged,
)
from testsupport.moto import EndpointUpdates, MotoServer

pytestmark = pytest.mark.django_db
SERVICES = (
    "s3",
    "ecr",
    "codebuild",
    "sagemaker",
    "logs",
    "lambda",
    "apigateway",
    "iam",
    "application-autoscaling",
    "cloudwatch",
)


class WorkerKilled(BaseException):
    """The worker process dying at this exact point (nothing in rdeploy catches it)."""


@contextmanager
def worker_dies_at_call(number: int) -> Iterator[None]:
    calls = 0

    def die(**kwargs: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == number:
            raise WorkerKilled

    clients = [aws_client(service) for service in SERVICES]
    for client in clients:
        client.meta.events.register("before-call.*.*", die, unique_id="rdeploy-fault-test")
    try:
        yield
    finally:
        for client in clients:
            client.meta.events.unregister("before-call.*.*", unique_id="rdeploy-fault-test")


def run_once(step: DeploymentStep) -> StepOutcome:
    """One run of the step as a fresh worker would start it: everything reloaded."""
    step.refresh_from_db()
    deployment = Deployment.objects.select_related("endpoint", "model_version").get(pk=step.deployment_id)
    step.started_at = step.started_at or deployment.created_at
    ctx = StepContext(deployment=deployment, step=step, previous=serving_deployment(deployment.endpoint))
    return get_target("sagemaker").run_step(step.name, ctx)


def run_with_a_kill_at_every_call(deployment: Deployment) -> int:
    """Every step: killed at call 1, rerun; killed at call 2, rerun; ... then completed."""
    kills = 0
    for step in deployment.steps.order_by("position"):
        number = 1
        while True:
            with worker_dies_at_call(number):
                try:
                    run_once(step)
                except WorkerKilled:
                    kills += 1
                    number += 1
                    continue
            break
        while run_once(step).kind == StepOutcome.WAIT:
            pass
        DeploymentStep.objects.filter(pk=step.pk).update(status=DeploymentStep.Status.SUCCEEDED)
    return kills


def monitoring() -> dict[str, int]:
    """How many alarms, and log groups SageMaker or Lambda write an endpoint's lines to, exist."""
    logs = aws_client("logs")
    groups = [
        group
        for prefix in ("/aws/sagemaker/Endpoints/", "/aws/lambda/")
        for group in logs.describe_log_groups(logGroupNamePrefix=prefix)["logGroups"]
    ]
    return {"alarms": len(aws_client("cloudwatch").describe_alarms()["MetricAlarms"]), "log_groups": len(groups)}


def test_a_worker_killed_at_every_aws_call_of_every_step_creates_no_duplicate_and_leaks_nothing(
    aws: MotoServer, owner: User, api_client_for: Any
) -> None:
    create_public(owner, api_client_for, autoscaling={"min": 1, "max": 2})
    creation = latest("iris-sm")

    kills = run_with_a_kill_at_every_call(creation)
    creation = drive(creation)

    assert creation.status == Deployment.Status.SUCCEEDED, creation.error
    assert kills >= 25
    assert counts() == {**ONE_PUBLIC_ENDPOINT, "scaling": 1}
    assert monitoring() == {"alarms": 0, "log_groups": 2}

    # A blue/green update (its rollback alarms), killed at every call too.
    push_image(creation.resources[ExternalResource.Kind.ECR_IMAGE])
    model = stub_model(owner, content=b"model-2")
    api_client_for(owner).post("/api/v1/endpoints/iris-sm/deployments", {"model": model.pk}, format="json")
    update = latest("iris-sm")
    with EndpointUpdates(aws_client("sagemaker")) as updates:
        run_with_a_kill_at_every_call(update)
        update = drive(update)

    assert update.status == Deployment.Status.SUCCEEDED, update.error
    assert len(updates.calls) == 1
    assert counts() == {**ONE_PUBLIC_ENDPOINT, "scaling": 1}
    assert monitoring() == {"alarms": 2, "log_groups": 2}

    api_client_for(owner).delete("/api/v1/endpoints/iris-sm/")
    deletion = latest("iris-sm")
    run_with_a_kill_at_every_call(deletion)
    deletion = drive(deletion)

    assert deletion.status == Deployment.Status.SUCCEEDED, deletion.error
    assert tagged() == []
    assert set(counts().values()) == {0}
    assert monitoring() == {"alarms": 0, "log_groups": 0}
    assert list(ExternalResource.objects.filter(deleted_at__isnull=True).values_list("kind", flat=True)) == [
        ExternalResource.Kind.ECR_IMAGE
    ]
