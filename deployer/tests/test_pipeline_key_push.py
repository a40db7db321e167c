"""A rotated key reaches a SageMaker endpoint's public API at once, whatever the endpoint's
status (review finding 12): the rotation enqueues a push of the new hash to the Lambda
authorizer instead of waiting for the reconciler (which syncs only live endpoints).
moto's server mode stands in for AWS."""

from __future__ import annotations

from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import User

from deployer.integrations.aws import lambda_
from deployer.integrations.aws.tagging import resource_tags
from deployer.models import Endpoint, ModelVersion
from deployer.services import endpoints
from deployer.services.endpoints import endpoint_rotate_key
from deployer.services.tokens import hash_secret
from deployer.targets.sagemaker.names import function_name
from deployer.targets.sagemaker.public_api import HANDLER_FILE
from tasks import app
from tasks import pipeline as pipeline_tasks
from testsupport.factories import make_endpoint, make_model_version
from testsupport.moto import MotoServer

pytestmark = pytest.mark.django_db


def test_rotating_the_key_of_a_failed_sagemaker_endpoint_pushes_the_new_hash_to_its_authorizer(
    owner: User, aws: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = make_model_version(owner, status=ModelVersion.Status.READY)
    endpoint = make_endpoint(
        owner,
        name="rotated",
        model_version=model,
        target=Endpoint.Target.SAGEMAKER,
        public=True,
        status=Endpoint.Status.FAILED,
        api_key_hash=hash_secret("rdk_old"),
    )
    function = function_name(endpoint)
    lambda_.create_function(
        function,
        role_arn=str(settings.RDEPLOY_SAGEMAKER_ROLE_ARN),
        code=lambda_.package(HANDLER_FILE),
        environment={"RDEPLOY_API_KEY_SHA256": hash_secret("rdk_old"), "SAGEMAKER_ENDPOINT_NAME": "x"},
        # As the public_function step tags it: rdeploy changes only its installation's functions.
        tags=resource_tags(settings.INSTALLATION_ID, endpoint="rotated"),
        timeout=30,
    )
    enqueued: list[tuple[str, tuple[Any, ...]]] = []
    monkeypatch.setattr(endpoints, "enqueue", lambda name, *args, **kw: enqueued.append((name, args)), raising=False)

    key = endpoint_rotate_key(endpoint=endpoint)
    assert pipeline_tasks  # the worker's task modules are registered here too
    for task_name, args in enqueued:
        app.tasks[task_name].apply(args=args).get()

    environment = lambda_.environment_of(function)
    assert environment is not None
    assert environment["RDEPLOY_API_KEY_SHA256"] == hash_secret(key)
    assert environment["SAGEMAKER_ENDPOINT_NAME"] == "x"
