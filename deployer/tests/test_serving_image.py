"""The serving image for real: built by the engine from the rendered context, started as
SageMaker starts it (`run IMAGE serve`, the model data unpacked from the model.tar.gz the
SageMaker target uploads, read-only at /opt/ml/model, port 8080), it answers /ping and
predicts what R's own predict() did for every test model (trained by the host's R 4.2.2,
served by the image's R 4.5). Packages Debian lacks come from RDEPLOY_CRAN_REPO at build time."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.files.base import ContentFile

from container_templates.tests.test_runtime_server import assert_same_predictions, csv_body
from deployer import serving_images
from deployer.integrations.containers import cli, images
from deployer.model_files import model_version_materialize
from deployer.models import ModelVersion
from deployer.services.images import serving_image_ensure
from deployer.targets.sagemaker.model_data import model_data_tarball
from deployer.tests.image_support import (
    make_cran_repository,
    nothing_installs,
    serve,
    serving_image,
    unpack_model_data,
)
from deployer.tests.intake_support import tar_gz
from testsupport.factories import make_model_version

pytestmark = [pytest.mark.slow, pytest.mark.django_db]
__all__ = ["serve", "serving_image"]

MODEL_CASES = ["lm", "glm_binomial", "randomforest", "ranger", "rpart", "svm", "bundle_log_dose"]


def uploaded(owner: User, case_dir: Path) -> ModelVersion:
    """The case as an upload: a bare .rds, or a bundle of the model's files."""
    files = {path.name: path.read_bytes() for path in sorted(case_dir.iterdir()) if path.name != "expected.json"}
    if list(files) == ["model.rds"]:
        return make_model_version(owner, name=case_dir.name.replace("_", "-"), content=files["model.rds"])
    model = make_model_version(owner, name=case_dir.name.replace("_", "-"), content=b"placeholder")
    model.artifact_kind = ModelVersion.ArtifactKind.TAR_GZ
    model.artifact.save(f"test/{owner.pk}/{case_dir.name}.tar.gz", ContentFile(tar_gz(files)))
    return model


@pytest.mark.parametrize("case", MODEL_CASES)
def test_the_image_serves_every_test_model_as_sagemaker_starts_it_predicting_what_r_predicted(
    serving_image: str, serve: Any, trained_models: Path, owner: User, tmp_path: Path, case: str
) -> None:
    # The model data exactly as the SageMaker target uploads it, unpacked as SageMaker does.
    model_dir = model_version_materialize(
        model_version=uploaded(owner, trained_models / case), destination=tmp_path / "materialized"
    )
    model_data_tarball(model_dir, tmp_path / "model.tar.gz")
    opt_ml_model = unpack_model_data(tmp_path / "model.tar.gz", tmp_path / "opt-ml-model")
    want = json.loads((trained_models / case / "expected.json").read_text())

    container = serve(serving_image, opt_ml_model)

    as_json = container.request(
        "POST", "/invocations", json.dumps(want["rows"]).encode(), {"Content-Type": "application/json"}
    )
    assert as_json.status == 200, (as_json.body, container.logs())
    assert_same_predictions(as_json.json()["predictions"], want["predictions"])
    as_csv = container.request("POST", "/invocations", csv_body(want["rows"]).encode(), {"Content-Type": "text/csv"})
    assert as_csv.status == 200, as_csv.body
    assert_same_predictions(as_csv.json()["predictions"], want["predictions"])


def label(image: str, name: str) -> str:
    return cli.check(["image", "inspect", "--format", f'{{{{index .Config.Labels "{name}"}}}}', image]).strip()


def test_the_image_says_sagemaker_may_bind_it_to_another_port_and_runs_serve_with_r_4_4_or_later(
    serving_image: str,
) -> None:
    assert label(serving_image, "com.amazonaws.sagemaker.capabilities.accept-bind-to-port") == "true"
    assert cli.check(["image", "inspect", "--format", "{{json .Config.Cmd}}", serving_image]).strip() == '["serve"]'
    version = cli.check(["run", "--rm", serving_image, "Rscript", "-e", "cat(format(getRversion()))"]).strip()
    assert tuple(int(part) for part in version.split(".")) >= (4, 4, 0)


def test_the_same_packages_reuse_the_image_without_building(
    serving_image: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_build(**_: Any) -> None:
        raise AssertionError("built again")

    monkeypatch.setattr(images, "build", no_build)

    assert serving_image_ensure(packages=["e1071", "rpart", "ranger", "randomForest", "rpart"]) == serving_image


@pytest.fixture
def built_here() -> Iterator[list[str]]:
    """Images a test builds for itself (its repository's tarballs differ every session)."""
    built: list[str] = []
    yield built
    for image in built:
        cli.run(["rmi", image])


def test_a_package_debian_lacks_comes_from_the_cran_repository_at_build_time_into_the_image(
    settings: Any, tmp_path: Path, built_here: list[str]
) -> None:
    settings.CRAN_REPO = make_cran_repository(tmp_path, package="rdeployanswer", answer=42)

    image = serving_image_ensure(packages=["rdeployanswer", "randomForest"])
    built_here.append(image)

    # Installed in the image: a container without any network loads it.
    loaded = cli.check(["run", "--rm", "--network", "none", image, "Rscript", "-e", "cat(rdeployanswer::answer())"])
    assert loaded.strip() == "42"
    assert image != serving_images.local_image(serving_images.serving_image_context(packages=["randomForest"]))
    # apt's lists and caches did not stay in the image.
    leftovers = cli.check(["run", "--rm", image, "sh", "-c", "ls /var/lib/apt/lists /var/cache/apt"]).split()
    assert leftovers == ["/var/cache/apt:", "archives", "/var/lib/apt/lists:"]


def test_a_package_neither_in_debian_nor_in_the_repository_fails_the_build_naming_it(
    settings: Any, tmp_path: Path
) -> None:
    settings.CRAN_REPO = make_cran_repository(tmp_path, package="rdeployanswer", answer=42)

    with pytest.raises(images.ImageBuildFailed) as failed:
        serving_image_ensure(packages=["rdeploynosuchpackage"])

    assert any(
        "not in Debian (as r-cran-*) nor in RDEPLOY_CRAN_REPO: rdeploynosuchpackage" in line
        for line in failed.value.lines
    ), failed.value.lines


def test_a_build_that_takes_too_long_fails_and_leaves_nothing_running(settings: Any, tmp_path: Path) -> None:
    settings.CRAN_REPO = make_cran_repository(tmp_path, package="rdeploysleepy", answer=1, install_seconds=600)

    with pytest.raises(images.ImageBuildFailed, match="took longer than 20 s") as failed:
        serving_image_ensure(packages=["rdeploysleepy"], timeout=20)

    assert any("installing *source* package" in line for line in failed.value.lines), failed.value.lines
    deadline = time.monotonic() + 20
    while not nothing_installs("rdeploysleepy"):
        assert time.monotonic() < deadline, "the build's R still runs"
        time.sleep(0.1)


def test_the_build_log_names_the_packages_whose_version_differs_from_the_renv_lock(
    tmp_path: Path, built_here: list[str]
) -> None:
    lock = {
        "R": {"Version": "4.2.2"},
        "Packages": {"randomForest": {"Package": "randomForest", "Version": "0.1-1", "Source": "Repository"}},
    }
    context = serving_images.serving_image_context(packages=["randomForest"], renv_lock=json.dumps(lock).encode())
    image = serving_images.local_image(context)
    built_here.append(image)

    job = images.start_build(directory=tmp_path / "job", context=context, tags=[image])
    deadline = time.monotonic() + 300
    while images.job_state(job).running:
        assert time.monotonic() < deadline
        time.sleep(0.1)

    assert images.job_state(job).exit_code == 0, images.last_output(tmp_path / "job")
    installed = cli.check(
        ["run", "--rm", image, "Rscript", "-e", "cat(packageDescription('randomForest', fields = 'Version'))"]
    ).strip()
    lines, _ = images.read_output(tmp_path / "job", 0)
    assert f"renv.lock pins randomForest 0.1-1; the image has {installed}" in lines
