"""The SageMaker target through the REST API and a real Celery worker against moto, with the
worker SIGKILLed inside every step of a create and of a delete and then restarted: the
endpoint still goes live, answers, and is torn down to zero tagged resources."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from django.contrib.auth.models import User

from deployer.models import Deployment, DeploymentStep, Endpoint
from deployer.services.pipeline import pipeline_reconcile
from deployer.targets import get_target
from deployer.tests.pipeline_support import FaultyWorker, finish
from deployer.tests.sagemaker_support import ONE_PUBLIC_ENDPOINT, counts, latest, stub_model, tagged
from testsupport.moto import MotoServer
from testsupport.waiting import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def kill_in_step(worker: FaultyWorker, deployment: Deployment, step: str) -> None:
    """SIGKILL the worker inside ``step`` (after its work, before its outcome is saved) and
    restart it; the reconciler, run here as beat would, resumes after the lease expires."""

    def running() -> bool:
        pipeline_reconcile()
        return deployment.steps.filter(name=step, status=DeploymentStep.Status.RUNNING).exists()

    wait_for(running, interval=0.2, timeout=90, what=f"step {step} to run")
    time.sleep(0.35)
    worker.kill()
    worker.start()


def test_a_worker_killed_in_every_step_still_deploys_serves_and_deletes_without_leaks(
    aws: MotoServer, faulty_worker: FaultyWorker, owner: User, api_client_for: Any
) -> None:
    client = api_client_for(owner)
    model = stub_model(owner)
    response = client.post(
        "/api/v1/endpoints/",
        {"name": "iris-sm", "model": model.pk, "target": "sagemaker", "public": True},
        format="json",
    )
    assert response.status_code == 202
    creation = latest("iris-sm")
    for step in get_target("sagemaker").steps(Deployment.Kind.CREATE, public=True):
        kill_in_step(faulty_worker, creation, step)
    creation = finish(creation)

    assert creation.status == Deployment.Status.SUCCEEDED, creation.error
    assert Endpoint.objects.get(name="iris-sm").status == Endpoint.Status.LIVE
    assert counts() == ONE_PUBLIC_ENDPOINT
    aws.queue_endpoint_results({"Body": '["virginica"]', "ContentType": "application/json"})
    answer = client.generic(
        "POST", "/api/v1/endpoints/iris-sm/invocations", b'[{"Sepal.Length": 6.3}]', content_type="application/json"
    )
    assert (answer.status_code, json.loads(answer.content)) == (200, ["virginica"])

    assert client.delete("/api/v1/endpoints/iris-sm/").status_code == 202
    deletion = latest("iris-sm")
    for step in get_target("sagemaker").steps(Deployment.Kind.DELETE, public=True):
        kill_in_step(faulty_worker, deletion, step)
    deletion = finish(deletion)

    assert deletion.status == Deployment.Status.SUCCEEDED, deletion.error
    assert tagged() == []
    assert set(counts().values()) == {0}
