"""Roll-forward on SageMaker (review finding 2): an update whose endpoint is InService on
the new config has switched traffic; a later step failing must not delete the model and
endpoint config that now serve. moto's server mode stands in for AWS; as in
test_sagemaker_target.py, a Stubber answers ``update_endpoint`` (not implemented by moto)
and moto's overwriting ``create_endpoint`` plays SageMaker finishing the update."""

from __future__ import annotations

import time

import pytest
from django.contrib.auth.models import User

from deployer.integrations.aws.client import aws_client
from deployer.models import Deployment, DeploymentStep, Endpoint, ModelVersion
from deployer.services.endpoints import endpoint_create, endpoint_update
from deployer.services.pipeline import deployment_advance
from deployer.targets.base import PermanentStepError, StepContext, StepOutcome
from deployer.targets.sagemaker import SageMakerTarget, endpoint_name, rollout_name
from deployer.tests.sagemaker_support import push_image
from testsupport.factories import make_model_version
from testsupport.moto import MotoServer, SingleCallStubber

pytestmark = pytest.mark.django_db
INSPECTION = {
    "r_version": {"writer": "4.2.2", "reader": "4.2.2"},
    "packages": {"required": [{"name": "randomForest", "version": "4.7-1.1"}]},
    "example": {"content_type": "application/json", "payload": '[{"Sepal.Length": 5.1}]', "rows": 1},
}


def ready(owner: User, content: bytes) -> ModelVersion:
    return make_model_version(
        owner, name="iris", content=content, status=ModelVersion.Status.READY, inspection=INSPECTION
    )


def advance(deployment: Deployment, *, until_step: str | None = None, rounds: int = 200) -> Deployment:
    """Advance in this process, answering every poll at once, until terminal (or a step is done)."""
    for _ in range(rounds):
        DeploymentStep.objects.filter(deployment=deployment).update(next_check_at=None)
        Deployment.objects.filter(pk=deployment.pk).update(lease_until=None)
        deployment_advance(deployment_id=deployment.pk)
        deployment.refresh_from_db()
        if deployment.is_terminal:
            return deployment
        if until_step and deployment.steps.get(name=until_step).status == DeploymentStep.Status.SUCCEEDED:
            return deployment
        time.sleep(0.01)
    raise AssertionError(f"deployment {deployment.pk} still {deployment.status}")


def test_a_sagemaker_update_failing_after_the_endpoint_is_in_service_keeps_what_serves(
    aws: MotoServer, owner: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    v1, v2 = ready(owner, b"model-1"), ready(owner, b"model-2")
    issued = endpoint_create(owner=owner, name="iris-fwd", model_version=v1, target="sagemaker")
    first = advance(issued.endpoint.current_deployment)  # type: ignore[arg-type]
    if first.status != Deployment.Status.SUCCEEDED:
        push_image(first.resources["ecr_image"])
        first = advance(first)
    assert first.status == Deployment.Status.SUCCEEDED, first.error

    update = endpoint_update(endpoint=Endpoint.objects.get(name="iris-fwd"), model_version=v2)
    name = endpoint_name(update.endpoint)
    with SingleCallStubber(aws_client("sagemaker"), "UpdateEndpoint") as stub:
        arn = f"arn:aws:sagemaker:us-east-1:123456789012:endpoint/{name}"
        stub.add_response("update_endpoint", {"EndpointArn": arn})
        advance(update, until_step="deploy_endpoint")
    aws_client("sagemaker").create_endpoint(EndpointName=name, EndpointConfigName=rollout_name(update))

    def retire_previous_fails(self: SageMakerTarget, ctx: StepContext) -> StepOutcome:
        raise PermanentStepError("Deleting the previous model was refused.")

    monkeypatch.setattr(SageMakerTarget, "_step_retire_previous", retire_previous_fails)
    update = advance(update)

    endpoint = Endpoint.objects.get(name="iris-fwd")
    assert (endpoint.status, endpoint.model_version) == (Endpoint.Status.LIVE, v2)
    assert "retire_previous" in endpoint.error
    assert update.status == Deployment.Status.SUCCEEDED
    assert update.traffic_switched_at is not None
    # What serves is still there: the new rollout's model and endpoint config.
    configs = {c["EndpointConfigName"] for c in aws_client("sagemaker").list_endpoint_configs()["EndpointConfigs"]}
    models = {m["ModelName"] for m in aws_client("sagemaker").list_models()["Models"]}
    assert rollout_name(update) in configs
    assert rollout_name(update) in models
    assert aws_client("sagemaker").describe_endpoint(EndpointName=name)["EndpointConfigName"] == rollout_name(update)
