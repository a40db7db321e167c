"""Factories for rows tests need; names say what the row is for."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.core.files.base import ContentFile
from django.utils import timezone

from deployer.models import Deployment, Endpoint, ModelVersion, Shadow


def make_user(username: str, *, is_staff: bool = False) -> User:
    user: User = get_user_model().objects.create_user(
        username=username, password=f"{username}-password-123", is_staff=is_staff
    )
    return user


def make_model_version(owner: User, name: str = "iris", **fields: Any) -> ModelVersion:
    version = ModelVersion.objects.filter(owner=owner, name=name).count() + 1
    content = fields.pop("content", f"{name}-{version}-{owner.pk}".encode())
    model_version = ModelVersion(
        owner=owner,
        name=name,
        version=version,
        sha256=f"{version:064x}",
        size=len(content),
        artifact_kind=ModelVersion.ArtifactKind.RDS,
        **fields,
    )
    model_version.artifact.save(f"test/{owner.pk}/{name}-{version}.rds", ContentFile(content), save=False)
    model_version.save()
    return model_version


def make_endpoint(owner: User, name: str, **fields: Any) -> Endpoint:
    return Endpoint.objects.create(owner=owner, name=name, **fields)


def make_shadow(endpoint: Endpoint, model_version: ModelVersion, **fields: Any) -> Shadow:
    """A shadow of ``endpoint`` (running, 10 % for 2 hours unless ``fields`` say otherwise)
    with the succeeded ``shadow`` deployment that started it; no runtime is started."""
    deployment = Deployment.objects.create(
        endpoint=endpoint,
        model_version=model_version,
        kind=Deployment.Kind.SHADOW,
        status=Deployment.Status.SUCCEEDED,
        finished_at=timezone.now(),
    )
    defaults: dict[str, Any] = {
        "status": Shadow.Status.RUNNING,
        "sample_percent": 10,
        "duration": timedelta(hours=2),
        "started_at": timezone.now(),
    }
    defaults |= fields
    if defaults["started_at"] is not None and "ends_at" not in fields:
        defaults["ends_at"] = defaults["started_at"] + defaults["duration"]
    return Shadow.objects.create(endpoint=endpoint, model_version=model_version, deployment=deployment, **defaults)
