"""The reconciler's reaper (review finding 3): a runtime still running though its
resource was removed (started by a step after its rollout was discarded, or a stop that
did not take) is stopped; a recorded, live one is left alone."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.utils import timezone

from deployer.integrations import processes
from deployer.models import Endpoint, ExternalResource, LogLine, ModelVersion
from deployer.services.pipeline import pipeline_reconcile
from testsupport.factories import make_endpoint, make_model_version

pytestmark = pytest.mark.django_db


def start_sleeper(identifier: str) -> None:
    directory = Path(settings.DATA_DIR) / "reaper" / identifier
    processes.start(
        identifier=identifier, command=["sleep", "120"], env={}, cwd=directory, log_path=directory / "sleep.log"
    )
    assert processes.find(identifier)


@pytest.fixture
def sleepers() -> Iterator[list[str]]:
    identifiers: list[str] = []
    yield identifiers
    for identifier in identifiers:
        processes.stop(identifier, grace=0.5)


def test_the_reconciler_stops_a_runtime_whose_resource_was_removed_and_keeps_a_live_one(
    owner: User, sleepers: list[str]
) -> None:
    model = make_model_version(owner, status=ModelVersion.Status.READY)
    endpoint = make_endpoint(owner, name="reaped", model_version=model)
    orphan, live = "reaped-orphan-1", "reaped-live-2"
    sleepers.extend([orphan, live])
    for identifier, deleted_at in ((orphan, timezone.now()), (live, None)):
        ExternalResource.objects.create(
            endpoint=endpoint, target="local", kind="process", identifier=identifier, deleted_at=deleted_at
        )
        start_sleeper(identifier)

    assert pipeline_reconcile()["reaped"] == 1

    assert processes.find(orphan) == []
    assert processes.find(live)
    assert LogLine.objects.filter(endpoint=endpoint, message__contains=orphan).exists()
    assert pipeline_reconcile()["reaped"] == 0
    assert Endpoint.objects.get(pk=endpoint.pk).status == endpoint.status
