"""Roll-forward on SageMaker (review finding 2): an update whose endpoint is InService on
the new config has switched traffic; a later step failing must not delete the model and
endpoint config that now serve. moto's server mode stands in for AWS; as in
test_sagemaker_target.py, a Stubber answers ``update_endpoint`` (not implemented by moto)
and moto's overwriting ``create_endpoint`` plays SageMaker finishing the update."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User

from deployer.integrations.aws.client import aws_client
from deployer.models import Deployment, Endpoint, ExternalResource
from deployer.services.endpoints import endpoint_create, endpoint_update
from deployer.targets.base import PermanentStepError, StepContext, StepOutcome
from deployer.targets.sagemaker.names import endpoint_name, rollout_name
from deployer.targets.sagemaker.target import STEPS
from deployer.tests.sagemaker_support import drive, push_image, stub_model
from testsupport.moto import MotoServer, SingleCallStubber

pytestmark = pytest.mark.django_db


def test_a_sagemaker_update_failing_after_the_endpoint_is_in_service_keeps_what_serves(
    aws: MotoServer, owner: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    v1, v2 = stub_model(owner, b"model-1"), stub_model(owner, b"model-2")
    issued = endpoint_create(owner=owner, name="iris-fwd", model_version=v1, target="sagemaker")
    first = drive(issued.endpoint.current_deployment)  # type: ignore[arg-type]
    if first.status != Deployment.Status.SUCCEEDED:
        push_image(first.resources[ExternalResource.Kind.ECR_IMAGE])
        first = drive(first)
    assert first.status == Deployment.Status.SUCCEEDED, first.error

    update = endpoint_update(endpoint=Endpoint.objects.get(name="iris-fwd"), model_version=v2)
    name = endpoint_name(update.endpoint)
    with SingleCallStubber(aws_client("sagemaker"), "UpdateEndpoint") as stub:
        arn = f"arn:aws:sagemaker:us-east-1:123456789012:endpoint/{name}"
        stub.add_response("update_endpoint", {"EndpointArn": arn})
        drive(update, until_step="deploy_endpoint")
    aws_client("sagemaker").create_endpoint(EndpointName=name, EndpointConfigName=rollout_name(update))

    def retire_previous_fails(ctx: StepContext) -> StepOutcome:
        raise PermanentStepError("Deleting the previous model was refused.")

    monkeypatch.setitem(STEPS, "retire_previous", retire_previous_fails)
    update = drive(update)

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
