"""The lease on a deployment while a step runs longer than the lease (review finding 3):
the heartbeat keeps it, so the reconciler's task and a delete leave the step alone."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connections
from django.utils import timezone

from deployer.models import Deployment, Endpoint, ModelVersion
from deployer.services import pipeline
from deployer.services.endpoints import endpoint_create
from deployer.services.pipeline import _cancel_rollouts, deployment_advance
from deployer.targets.base import StepContext, StepOutcome
from deployer.targets.local import LocalTarget
from testsupport.factories import make_model_version
from testsupport.waiting import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_step_running_three_times_longer_than_the_lease_runs_once_and_is_not_cancelled(
    owner: User, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.PIPELINE_LEASE_SECONDS = 1
    started, release = threading.Event(), threading.Event()
    runs: list[float] = []

    def slow_step(self: LocalTarget, ctx: StepContext) -> StepOutcome:
        runs.append(time.monotonic())
        if len(runs) == 1:
            started.set()
            release.wait(20)
        return StepOutcome.done("Took its time.")

    # This test is the only worker: no task is sent to a Celery worker that may be running.
    monkeypatch.setattr(pipeline, "enqueue", lambda *args, **kwargs: None)
    monkeypatch.setattr(LocalTarget, "steps", lambda self, kind, *, public: ["slow"])
    monkeypatch.setitem(LocalTarget.STEPS, "slow", slow_step)
    issued = endpoint_create(
        owner=owner, name="slow", model_version=make_model_version(owner, status=ModelVersion.Status.READY)
    )
    deployment = issued.endpoint.current_deployment
    assert deployment is not None

    def worker() -> None:
        try:
            deployment_advance(deployment_id=deployment.pk)
        finally:
            connections.close_all()

    first = threading.Thread(target=worker)
    first.start()
    try:
        assert started.wait(10)
        first_lease = Deployment.objects.get(pk=deployment.pk).lease_until
        assert first_lease is not None
        # Three leases later by the lease itself: only the heartbeat moves it on.
        renewed = first_lease + timedelta(seconds=3)
        wait_for(
            lambda: Deployment.objects.filter(pk=deployment.pk, lease_until__gte=renewed).exists(),
            timeout=30,
            what="the heartbeat to renew the lease past three lease lengths",
        )
        assert timezone.now() > first_lease  # the first lease has expired meanwhile
        # What the reconciler's task and a delete would do meanwhile.
        deployment_advance(deployment_id=deployment.pk)
        deployment.refresh_from_db()
        assert deployment.status == Deployment.Status.RUNNING
        assert _cancel_rollouts(Deployment(pk=0, endpoint=issued.endpoint)) is False
    finally:
        release.set()
        first.join(20)

    assert len(runs) == 1
    deployment_advance(deployment_id=deployment.pk)  # the task the first one rescheduled
    deployment.refresh_from_db()
    assert deployment.status == Deployment.Status.SUCCEEDED, deployment.error
    assert Endpoint.objects.get(name="slow").status == Endpoint.Status.LIVE
