"""The reconciler's reaper (review finding 3): a runtime container still there though its
resource was removed (started by a step after its rollout was discarded, or a stop that
did not take) is removed; a recorded, live one is left alone."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.utils import timezone

from deployer.integrations.containers import cli, runtimes
from deployer.models import Endpoint, ExternalResource, LogLine, ModelVersion
from deployer.services.reconciler import pipeline_reconcile
from deployer.tests.pipeline_support import container_running
from testsupport.factories import make_endpoint, make_model_version

pytestmark = pytest.mark.django_db


def start_sleeper(name: str) -> None:
    """A container labelled as one of this installation's runtimes."""
    labels = cli.installation_labels(runtimes.ROLE)
    cli.check(["run", "--detach", "--name", name, *labels, "--network", "none", settings.BASE_IMAGE, "sleep", "120"])


def test_the_reconciler_removes_a_runtime_whose_resource_was_removed_and_keeps_a_live_one(owner: User) -> None:
    model = make_model_version(owner, status=ModelVersion.Status.READY)
    endpoint = make_endpoint(owner, name="reaped", model_version=model)
    orphan = f"rdeploy-{settings.INSTALLATION_ID}-reaped-1"
    live = f"rdeploy-{settings.INSTALLATION_ID}-reaped-2"
    for name, deleted_at in ((orphan, timezone.now()), (live, None)):
        ExternalResource.objects.create(
            endpoint=endpoint,
            target=Endpoint.Target.LOCAL,
            kind=ExternalResource.Kind.CONTAINER,
            identifier=name,
            deleted_at=deleted_at,
        )
        start_sleeper(name)
    try:
        assert pipeline_reconcile()["reaped"] == 1

        assert runtimes.state(orphan) is None
        assert container_running(live)
        assert LogLine.objects.filter(endpoint=endpoint, message__contains=orphan).exists()
        assert pipeline_reconcile()["reaped"] == 0
        assert Endpoint.objects.get(pk=endpoint.pk).status == endpoint.status
    finally:
        for name in (orphan, live):
            cli.remove(name)
