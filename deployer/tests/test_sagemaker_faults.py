"""Fault tests for the SageMaker target against moto: the worker dying at every AWS call of
every step, then the step running again from the top (what the pipeline does once the dead
worker's lease expires), must create no duplicate and leave nothing behind on delete.

The death is injected as an exception no code catches, raised by a botocore
``before-call`` hook at the n-th AWS call, for n = 1, 2, ... until the step completes
without reaching it: every point at which a step talks to AWS is a kill point.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import User

from deployer.integrations.aws import tagging
from deployer.integrations.aws.client import aws_client
from deployer.models import Deployment, DeploymentStep, ExternalResource
from deployer.services.pipeline import serving_deployment
from deployer.targets import get_target
from deployer.targets.base import StepContext, StepOutcome
from deployer.tests.test_sagemaker_target import create_public, drive, latest
from testsupport.moto import MotoServer

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


def counts() -> dict[str, int]:
    sagemaker = aws_client("sagemaker")
    apigateway = aws_client("apigateway")
    return {
        "models": len(sagemaker.list_models()["Models"]),
        "configs": len(sagemaker.list_endpoint_configs()["EndpointConfigs"]),
        "endpoints": len(sagemaker.list_endpoints()["Endpoints"]),
        "functions": len(aws_client("lambda").list_functions()["Functions"]),
        "roles": len(aws_client("iam").list_roles(PathPrefix="/rdeploy/")["Roles"]),
        "apis": len(apigateway.get_rest_apis()["items"]),
        "keys": len(apigateway.get_api_keys()["items"]),
        "plans": len(apigateway.get_usage_plans()["items"]),
        "scaling": len(
            aws_client("application-autoscaling").describe_scalable_targets(ServiceNamespace="sagemaker")[
                "ScalableTargets"
            ]
        ),
        "objects": len(aws_client("s3").list_objects_v2(Bucket=settings.RDEPLOY_S3_BUCKET).get("Contents", [])),
    }


def tagged() -> list[tagging.CloudResource]:
    return list(
        tagging.inventory(
            installation=settings.INSTALLATION_ID,
            prefix=settings.RDEPLOY_RESOURCE_PREFIX,
            bucket=settings.RDEPLOY_S3_BUCKET,
            repository="no-images-are-pushed-by-moto-codebuild",
        )
    )


def test_a_worker_killed_at_every_aws_call_of_every_step_creates_no_duplicate_and_leaks_nothing(
    aws: MotoServer, owner: User, api_client_for: Any
) -> None:
    create_public(owner, api_client_for, autoscaling={"min": 1, "max": 2})
    creation = latest("iris-sm")

    kills = run_with_a_kill_at_every_call(creation)
    creation = drive(creation)

    assert creation.status == Deployment.Status.SUCCEEDED, creation.error
    assert kills >= 25
    assert counts() == {
        "models": 1,
        "configs": 1,
        "endpoints": 1,
        "functions": 1,
        "roles": 1,
        "apis": 1,
        "keys": 1,
        "plans": 1,
        "scaling": 1,
        # The model data; the build context is removed once the build finished.
        "objects": 1,
    }

    api_client_for(owner).delete("/api/v1/endpoints/iris-sm/")
    deletion = latest("iris-sm")
    run_with_a_kill_at_every_call(deletion)
    deletion = drive(deletion)

    assert deletion.status == Deployment.Status.SUCCEEDED, deletion.error
    assert tagged() == []
    assert set(counts().values()) == {0}
    assert list(ExternalResource.objects.filter(deleted_at__isnull=True).values_list("kind", flat=True)) == [
        "ecr_image"
    ]
