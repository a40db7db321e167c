"""The deployment pipeline driven in the test process (no worker), for the local and
SageMaker target tests."""

from __future__ import annotations

import time
from typing import Any

from django.contrib.auth.models import User

from deployer.models import Deployment, DeploymentStep, ModelVersion
from deployer.services.pipeline import deployment_advance
from testsupport.factories import make_model_version


def ready_model(owner: User, content: bytes, **inspection: Any) -> ModelVersion:
    """A ready ModelVersion "iris" of ``content`` whose inspection recorded ``inspection``."""
    return make_model_version(
        owner, name="iris", content=content, status=ModelVersion.Status.READY, inspection=inspection
    )


def drive(
    deployment: Deployment, *, timeout: float = 60, answer_polls: bool = False, until_step: str | None = None
) -> Deployment:
    """Advance until the deployment is terminal (or until ``until_step`` has succeeded).

    ``answer_polls`` checks every waiting step again at once and drops the lease a step
    left behind: moto's resources are ready on the first check, real containers are not.
    """
    deadline = time.monotonic() + timeout
    while True:
        if answer_polls:
            DeploymentStep.objects.filter(deployment=deployment).update(next_check_at=None)
            Deployment.objects.filter(pk=deployment.pk).update(lease_until=None)
        deployment_advance(deployment_id=deployment.pk)
        deployment.refresh_from_db()
        if deployment.is_terminal:
            return deployment
        if until_step and deployment.steps.get(name=until_step).status == DeploymentStep.Status.SUCCEEDED:
            return deployment
        if time.monotonic() > deadline:
            steps = list(deployment.steps.values("name", "status"))
            raise AssertionError(f"deployment {deployment.pk} still {deployment.status} after {timeout} s: {steps}")
        time.sleep(0.01 if answer_polls else 0.05)
