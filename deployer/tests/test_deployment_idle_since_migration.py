"""Migration 0007 moves the idle stop's ``idle_since`` out of a stop deployment's resources
JSON into its own column, and back when unapplied."""

from __future__ import annotations

import importlib
from datetime import UTC, datetime

import pytest
from django.apps import apps
from django.contrib.auth.models import User

from deployer.models import Deployment, Endpoint
from deployer.services.endpoints import endpoint_stopped_idle_since
from testsupport.factories import make_endpoint, make_model_version

migration = importlib.import_module("deployer.migrations.0007_deployment_idle_since")

pytestmark = pytest.mark.django_db

IDLE_SINCE = datetime(2026, 11, 30, 8, 15, tzinfo=UTC)


def stopped_endpoint(owner: User, name: str, resources: dict[str, str]) -> Endpoint:
    endpoint = make_endpoint(owner, name, status=Endpoint.Status.STOPPED)
    Deployment.objects.create(
        endpoint=endpoint,
        model_version=make_model_version(owner),
        kind=Deployment.Kind.STOP,
        status=Deployment.Status.SUCCEEDED,
        resources=resources,
    )
    return endpoint


def test_a_stop_recorded_in_resources_before_the_column_keeps_its_idle_since(owner: User) -> None:
    idle = stopped_endpoint(owner, "idle", {"container": "c1", "idle_since": IDLE_SINCE.isoformat()})
    by_hand = stopped_endpoint(owner, "by-hand", {"container": "c2"})

    migration.idle_since_to_column(apps, None)

    stop = Deployment.objects.get(endpoint=idle)
    assert (stop.idle_since, stop.resources) == (IDLE_SINCE, {"container": "c1"})
    assert endpoint_stopped_idle_since(idle) == IDLE_SINCE
    assert endpoint_stopped_idle_since(by_hand) is None
    assert Deployment.objects.get(endpoint=by_hand).resources == {"container": "c2"}

    migration.idle_since_to_resources(apps, None)

    assert Deployment.objects.get(endpoint=idle).resources == {"container": "c1", "idle_since": IDLE_SINCE.isoformat()}
