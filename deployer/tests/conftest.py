"""Fixtures for deployer tests: the session's trained R models, a moto server standing in for AWS."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings

from testsupport.moto import MotoServer


@pytest.fixture(scope="session")
def trained_models(r_models: Path) -> Path:
    """<dir>/<case>/model.rds (+ predict.R) and expected.json with rows and R's predictions,
    for lm, glm_binomial, randomforest, ranger, rpart, svm and bundle_log_dose (and more:
    testsupport/train_models.R)."""
    return r_models


@pytest.fixture(scope="session")
def iris_models(r_models: Path) -> Path:
    """<dir>/v1.rds, v2.rds and expected.json {rows, v1, v2} (R's own predictions)."""
    return r_models / "iris_versions"


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """One moto server per session on the port AWS_ENDPOINT_URL names (testsupport.env)."""
    server = MotoServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def aws(moto_server: MotoServer) -> MotoServer:
    """An empty AWS account holding what an operator sets up once: the bucket and the roles."""
    from deployer.integrations.aws import client

    moto_server.reset()
    iam = client.aws_client("iam")
    for role_arn in (settings.RDEPLOY_SAGEMAKER_ROLE_ARN, settings.RDEPLOY_CODEBUILD_ROLE_ARN):
        iam.create_role(RoleName=str(role_arn).rsplit("/", 1)[1], AssumeRolePolicyDocument="{}")
    client.aws_client("s3").create_bucket(Bucket=settings.RDEPLOY_S3_BUCKET)
    return moto_server
