"""Factories for rows tests need; names say what the row is for."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.core.files.base import ContentFile

from deployer.models import Endpoint, ModelVersion


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
