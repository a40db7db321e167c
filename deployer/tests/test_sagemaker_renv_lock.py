"""A bundle's renv.lock goes into the SageMaker image's build context (the build compares
its versions with the installed ones), so the image tag (the context's hash) depends on it.
Against moto (server mode)."""

from __future__ import annotations

import io
import json
import tarfile
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.files.base import ContentFile

from deployer.build_context import PUBLIC_BASE_IMAGE, render_build_context
from deployer.models import Deployment, ExternalResource, ModelVersion
from deployer.targets.sagemaker.image import image_build_context
from deployer.tests.sagemaker_support import drive, latest, stub_model
from testsupport.moto import MotoServer

pytestmark = pytest.mark.django_db
# saveRDS(1L, compress = FALSE) by R 4.2.2: the bundle check wants a real .rds header.
RDS = (
    b"X\n\x00\x00\x00\x03\x00\x04\x02\x02\x00\x03\x05\x00\x00\x00\x00\x05UTF-8"
    b"\x00\x00\x00\r\x00\x00\x00\x01\x00\x00\x00\x01"
)


def renv_lock(version: str) -> bytes:
    lock = {
        "R": {"Version": "4.4.2", "Repositories": [{"Name": "CRAN", "URL": "https://cloud.r-project.org"}]},
        "Packages": {
            "randomForest": {"Package": "randomForest", "Version": version, "Source": "Repository"},
        },
    }
    return json.dumps(lock, indent=2).encode()


def bundle_model(owner: User, files: dict[str, bytes]) -> ModelVersion:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as archive:
        for name, content in files.items():
            info = tarfile.TarInfo(f"churn/{name}")
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    model = stub_model(owner, content=b"placeholder")
    model.artifact_kind = ModelVersion.ArtifactKind.TAR_GZ
    model.artifact.save(f"test/{owner.pk}/bundle-{model.version}.tar.gz", ContentFile(raw.getvalue()))
    return model


def test_a_bundles_renv_lock_goes_into_the_image_and_its_tag(aws: MotoServer, owner: User, api_client_for: Any) -> None:
    lock = renv_lock("4.7-1.1")
    model = bundle_model(owner, {"model.rds": RDS, "renv.lock": lock})

    api_client_for(owner).post(
        "/api/v1/endpoints/", {"name": "churn", "model": model.pk, "target": "sagemaker"}, format="json"
    )
    deployment = drive(latest("churn"))

    assert deployment.status == Deployment.Status.SUCCEEDED, deployment.error
    pinned = render_build_context(packages=["randomForest"], renv_lock=lock, base_image=PUBLIC_BASE_IMAGE)
    unpinned = render_build_context(packages=["randomForest"], base_image=PUBLIC_BASE_IMAGE)
    assert pinned.tag != unpinned.tag
    assert deployment.resources[ExternalResource.Kind.ECR_IMAGE] == f"rdeploy-runtime:{pinned.tag}"
    assert image_build_context(model).files["build/renv.lock"] == (lock, 0o644)


def test_another_renv_lock_needs_another_image_and_a_bundle_without_one_is_unpinned(owner: User) -> None:
    first = bundle_model(owner, {"model.rds": RDS, "renv.lock": renv_lock("4.7-1.1")})
    second = bundle_model(owner, {"model.rds": RDS, "renv.lock": renv_lock("4.7-1.2")})
    without = bundle_model(owner, {"model.rds": RDS, "predict.R": b"predict <- function(m, d) 1\n"})

    assert image_build_context(first).tag != image_build_context(second).tag
    assert "build/renv.lock" not in image_build_context(without).files
    assert image_build_context(without).tag == image_build_context(stub_model(owner)).tag
