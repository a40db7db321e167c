"""`rdeploy_gc` also lists what still costs money that nobody seems to need (issue 14):
endpoints stopped for longer than RDEPLOY_GC_STOPPED_AFTER_DAYS and images no endpoint uses,
each with its monthly storage cost from the bundled price table (moto has no Price List
API), the arithmetic written out beside the expected figure."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.utils import timezone

from deployer.models import Deployment, Endpoint, ExternalResource, ModelVersion
from testsupport.factories import make_endpoint, make_model_version
from testsupport.moto import MotoServer

pytestmark = pytest.mark.django_db
GiB = 1024**3


def stopped_for(owner: User, name: str, days: int, *, model_bytes: int, image_bytes: int) -> Endpoint:
    version = make_model_version(owner, name=name, status=ModelVersion.Status.READY)
    ModelVersion.objects.filter(pk=version.pk).update(size=model_bytes)
    version.refresh_from_db()
    endpoint = make_endpoint(
        owner, name, target=Endpoint.Target.SAGEMAKER, status=Endpoint.Status.STOPPED, model_version=version
    )
    Deployment.objects.create(
        endpoint=endpoint,
        model_version=version,
        kind=Deployment.Kind.STOP,
        status=Deployment.Status.SUCCEEDED,
        finished_at=timezone.now() - timedelta(days=days),
    )
    ExternalResource.objects.create(
        endpoint=endpoint,
        target=Endpoint.Target.SAGEMAKER,
        kind=ExternalResource.Kind.ECR_IMAGE,
        identifier=f"rdeploy-runtime:{name}",
        details={"size_bytes": image_bytes},
    )
    return endpoint


def test_gc_lists_long_stopped_endpoints_and_unused_images_with_their_monthly_cost(
    aws: MotoServer, owner: User, settings: Any
) -> None:
    settings.GC_STOPPED_AFTER_DAYS = 30
    stopped_for(owner, "forgotten", 40, model_bytes=2 * GiB, image_bytes=GiB)
    stopped_for(owner, "napping", 5, model_bytes=GiB, image_bytes=GiB)
    gone = make_endpoint(owner, "gone", target=Endpoint.Target.SAGEMAKER, status=Endpoint.Status.DELETED)
    ExternalResource.objects.create(
        endpoint=gone,
        target=Endpoint.Target.SAGEMAKER,
        kind=ExternalResource.Kind.ECR_IMAGE,
        identifier="rdeploy-runtime:gone",
        details={"size_bytes": 3 * GiB, "unused_since": "2026-01-02T00:00:00+00:00"},
    )

    out = StringIO()
    call_command("rdeploy_gc", stdout=out)
    lines = [line for line in out.getvalue().splitlines() if line.startswith("Still costs")]

    # forgotten: model data 2 GB x 0.023 = 0.046, image 1 GB x 0.10 = 0.10 -> 0.146 -> 0.15
    # the deleted endpoint's image: 3 GB x 0.10 = 0.30; napping is stopped only 5 days
    stopped_on = (timezone.now() - timedelta(days=40)).date().isoformat()
    assert lines == [
        f"Still costs 0.15 USD/month: stopped endpoint forgotten (since {stopped_on})",
        "Still costs 0.30 USD/month: unused image rdeploy-runtime:gone (since 2026-01-02)",
    ]
    # Report only: with --delete the stopped endpoint is still there.
    call_command("rdeploy_gc", "--delete", stdout=StringIO())
    assert Endpoint.objects.get(name="forgotten").status == Endpoint.Status.STOPPED


def test_beat_runs_the_report_daily_and_it_deletes_nothing(aws: MotoServer, owner: User, settings: Any) -> None:
    from tasks.system import gc_report_task

    assert settings.CELERY_BEAT_SCHEDULE["gc-report"]["task"] == "rdeploy.gc_report"
    assert settings.CELERY_BEAT_SCHEDULE["gc-report"]["schedule"] == 86400
    stopped_for(owner, "forgotten", 40, model_bytes=GiB, image_bytes=GiB)
    report = gc_report_task()
    assert "stopped endpoint forgotten" in report
    assert Endpoint.objects.get(name="forgotten").status == Endpoint.Status.STOPPED
