"""The deployment pipeline driven in the test process (no worker), for the local and
SageMaker target tests; and a real worker killed inside a step, for the fault tests."""

from __future__ import annotations

import re
import time
from typing import Any

from django.contrib.auth.models import User

from deployer import task_names
from deployer.models import Deployment, DeploymentStep, ModelVersion
from deployer.services.pipeline import deployment_advance
from testsupport.factories import make_model_version
from testsupport.services import CeleryWorker
from testsupport.waiting import wait_for


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


def wait_inside_step(worker: CeleryWorker, deployment: Deployment, step: str, *, timeout: float = 120) -> int:
    """Wait until ``worker``'s process is inside the first run of ``step`` (after the step's
    work, before its outcome is saved: the fault pause of RDEPLOY_PIPELINE_FAULT_PAUSE_MS);
    its pid.

    The worker says so itself (the pause's log line names the deployment, the step, the
    attempt and its pid), so a fault between steps or between two polls of a waiting step,
    which would prove nothing, cannot pass for one inside the step.
    """
    assert worker.process is not None
    pid = worker.process.pid
    inside = f"fault pause: deployment {deployment.pk} step {step} attempt 1 run pid {pid}\n"
    wait_for(
        lambda: inside in worker.logfile.read_text(errors="replace"),
        timeout=timeout,
        interval=0.02,
        what=f"worker {pid} inside step {step} of deployment {deployment.pk}",
    )
    return pid


def kill_inside_step(worker: CeleryWorker, deployment: Deployment, step: str, *, timeout: float = 120) -> None:
    """SIGKILL ``worker`` inside the first run of ``step`` (``wait_inside_step``), then start
    it again. The caller asserts afterwards that the step ran again (``attempts == 2``)."""
    wait_inside_step(worker, deployment, step, timeout=timeout)
    worker.kill()
    row = deployment.steps.get(name=step)
    # Killed before the outcome was saved: still running, on its first attempt.
    assert (row.status, row.attempts) == (DeploymentStep.Status.RUNNING, 1), (step, row.status, row.attempts)
    worker.start()


def reconciled(worker: CeleryWorker, *, since: int = 0) -> int:
    """How many reconciler runs ``worker`` finished, by its log from byte ``since`` on."""
    with worker.logfile.open("rb") as log:
        log.seek(since)
        text = log.read().decode(errors="replace")
    return len(re.findall(rf"Task {re.escape(task_names.PIPELINE_RECONCILE)}\[[^\]]+\] succeeded", text))
