"""Shared helpers for the SageMaker target tests against moto: ready model versions, the
pipeline driven in this process, what CodeBuild would push, the public endpoint most tests
create, and what is left in the (moto) cloud."""

from __future__ import annotations

import json
from functools import partial
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User

from deployer.integrations.aws import tagging
from deployer.integrations.aws.client import aws_client
from deployer.models import Deployment, ModelVersion
from deployer.targets.sagemaker.names import prefix
from testsupport import pipeline

INSPECTION = {
    "r_version": {"writer": "4.2.2", "reader": "4.2.2"},
    "packages": {"required": [{"name": "randomForest", "version": "4.7-1.1"}]},
    "example": {"content_type": "application/json", "payload": '[{"Sepal.Length": 5.1}]', "rows": 1},
}


def stub_model(owner: User, content: bytes = b"model-1", **inspection: Any) -> ModelVersion:
    """A ready model version of any content (moto runs no container), as inspection records it."""
    return pipeline.ready_model(owner, content, **{**INSPECTION, **inspection})


def named(rest: str) -> str:
    """A resource name of this installation, ``<prefix>-<installation>-<rest>``."""
    return f"{prefix()}-{rest}"


# moto answers every poll at once.
drive = partial(pipeline.drive, answer_polls=True)


def latest(name: str) -> Deployment:
    return Deployment.objects.filter(endpoint__name=name).order_by("-id").first()  # type: ignore[return-value]


def push_image(tag_or_uri: str, *, size: int = 1) -> None:
    """What the CodeBuild buildspec's `docker push` does (moto's CodeBuild runs nothing).
    moto answers the config's size as the image's ``imageSizeInBytes``."""
    repository, tag = tag_or_uri.rsplit("/", 1)[-1].split(":")
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "size": size,
            "digest": "sha256:" + "0" * 64,
        },
        "layers": [],
    }
    aws_client("ecr").put_image(repositoryName=repository, imageManifest=json.dumps(manifest), imageTag=tag)


def builds_started() -> int:
    return len(aws_client("codebuild").list_builds()["ids"])


def create_public(owner: User, api_client_for: Any, name: str = "iris-sm", **options: Any) -> dict[str, Any]:
    model = stub_model(owner)
    response = api_client_for(owner).post(
        "/api/v1/endpoints/",
        {"name": name, "model": model.pk, "target": "sagemaker", "public": True, "options": options},
        format="json",
    )
    assert response.status_code == 202, response.content
    return dict(response.json())


def counts() -> dict[str, int]:
    """How many resources of each kind the (moto) account holds."""
    sagemaker = aws_client("sagemaker")
    apigateway = aws_client("apigateway")
    return {
        "models": len(sagemaker.list_models()["Models"]),
        "configs": len(sagemaker.list_endpoint_configs()["EndpointConfigs"]),
        "endpoints": len(sagemaker.list_endpoints()["Endpoints"]),
        "functions": len(aws_client("lambda").list_functions()["Functions"]),
        "roles": len(aws_client("iam").list_roles(PathPrefix=f"/{prefix()}/")["Roles"]),
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


# What counts() finds while one public endpoint without autoscaling is live: the model data
# is the one S3 object (the build context is removed once the build finished).
ONE_PUBLIC_ENDPOINT = {
    "models": 1,
    "configs": 1,
    "endpoints": 1,
    "functions": 1,
    "roles": 1,
    "apis": 1,
    "keys": 1,
    "plans": 1,
    "scaling": 0,
    "objects": 1,
}


def tagged() -> list[tagging.CloudResource]:
    """Every resource tagged with this installation, in any service."""
    return list(
        tagging.inventory(
            installation=settings.INSTALLATION_ID,
            prefix=prefix(),
            bucket=settings.RDEPLOY_S3_BUCKET,
            repository="no-images-are-pushed-by-moto-codebuild",
        )
    )


class SentRequests:
    """The parameters rdeploy passes to one AWS operation, as boto3 receives them: for
    what moto accepts and then drops (``ShadowProductionVariants`` is not kept on moto's
    endpoint configs, so describing them does not show it)."""

    def __init__(self, service: str, operation: str) -> None:
        self.client = aws_client(service)
        self.event = f"provide-client-params.{service}.{operation}"
        self.calls: list[dict[str, Any]] = []

    def _record(self, params: dict[str, Any], **kwargs: Any) -> None:
        self.calls.append(json.loads(json.dumps(params, default=str)))

    def __enter__(self) -> SentRequests:
        self.client.meta.events.register(self.event, self._record, unique_id="rdeploy-sent-requests")
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.meta.events.unregister(self.event, unique_id="rdeploy-sent-requests")
