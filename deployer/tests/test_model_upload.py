"""`/api/v1/models/`: upload, refusals, idempotency, permissions, deletion, and the real
Celery worker taking an upload to `ready`."""

import hashlib
import io
import os
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile, TemporaryUploadedFile
from django.db import OperationalError
from rest_framework.test import APIClient

from deployer.models import Endpoint, ModelVersion
from deployer.services import model_intake
from deployer.services.model_intake import UploadOutcome, model_version_upload
from deployer.tests.intake_support import MODELS_URL, tar_gz, wait_for_verdict, zip_bytes
from testsupport.factories import make_endpoint
from testsupport.r_models import expected, rows_csv

URL = MODELS_URL


@pytest.fixture(scope="module")
def lm_rds(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("lm") / "model.rds"
    subprocess.run(
        [settings.RSCRIPT, "--vanilla", "-e", f"saveRDS(lm(mpg ~ wt, data = mtcars), '{path}')"],
        check=True,
        capture_output=True,
    )
    return path.read_bytes()


def post(client: APIClient, name: str, content: bytes, **extra: Any) -> Any:
    data = {"name": name, "file": SimpleUploadedFile("upload.bin", content), **extra}
    return client.post(URL, data, format="multipart")


def stored_files() -> set[Path]:
    root = Path(settings.DATA_DIR) / "artifacts" / "models"
    return {path for path in root.rglob("*") if path.is_file()} if root.exists() else set()


@pytest.fixture
def new_files() -> Any:
    """new_files() -> artifact files stored since the test began (the data dir is per session)."""
    before = stored_files()
    return lambda: stored_files() - before


def upload_temp_files() -> list[Path]:
    return [path for path in Path(settings.FILE_UPLOAD_TEMP_DIR).iterdir() if path.name.endswith(".upload")]


@pytest.mark.django_db
def test_uploading_an_rds_answers_201_with_the_new_version(owner: User, api_client_for: Any, lm_rds: bytes) -> None:
    response = post(api_client_for(owner), "cars", lm_rds, packages="jsonlite")

    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["name"] == "cars"
    assert body["version"] == 1
    assert body["status"] == "inspecting"
    assert body["sha256"] == hashlib.sha256(lm_rds).hexdigest()
    assert body["size"] == len(lm_rds)
    assert body["artifact_kind"] == "rds"
    assert body["requested_packages"] == ["jsonlite"]
    version = ModelVersion.objects.get(pk=body["id"])
    assert version.artifact.read() == lm_rds
    assert not upload_temp_files()


@pytest.mark.django_db
def test_uploading_the_same_bytes_again_returns_the_existing_version(
    owner: User, api_client_for: Any, lm_rds: bytes, new_files: Any
) -> None:
    client = api_client_for(owner)
    first = post(client, "cars", lm_rds).json()

    again = post(client, "cars", lm_rds)

    assert again.status_code == 200
    assert again.json()["id"] == first["id"]
    assert ModelVersion.objects.filter(owner=owner, name="cars").count() == 1
    assert len(new_files()) == 1


@pytest.mark.django_db
def test_new_bytes_under_the_same_name_become_the_next_version(owner: User, api_client_for: Any, lm_rds: bytes) -> None:
    client = api_client_for(owner)
    post(client, "cars", lm_rds)

    bundle = post(client, "cars", tar_gz({"model.rds": lm_rds, "predict.R": b"# hooks\n"}))

    assert bundle.status_code == 201
    assert (bundle.json()["version"], bundle.json()["artifact_kind"]) == (2, "tar.gz")


def _symlink_tar(model: bytes) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        info = tarfile.TarInfo("model.rds")
        info.size = len(model)
        archive.addfile(info, io.BytesIO(model))
        link = tarfile.TarInfo("secrets")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/shadow"
        archive.addfile(link)
    return buffer.getvalue()


def _device_tar(model: bytes) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        info = tarfile.TarInfo("model.rds")
        info.size = len(model)
        archive.addfile(info, io.BytesIO(model))
        device = tarfile.TarInfo("disk")
        device.type = tarfile.BLKTYPE
        archive.addfile(device)
    return buffer.getvalue()


REFUSALS = [
    ("Bad_Name", lambda m: m, {}, "invalid name 'Bad_Name'"),
    ("-leading-hyphen", lambda m: m, {}, "invalid name"),
    ("ok", lambda m: b"just some text", {}, "unrecognised file format"),
    ("ok", lambda m: b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03garbage", {}, "corrupt"),
    ("ok", lambda m: tar_gz({"predict.R": b"x"}), {}, "no model.rds"),
    ("ok", lambda m: tar_gz({"model.rds": m})[:-100], {}, "corrupt"),
    ("ok", lambda m: zip_bytes({"model.rds": m})[:-40], {}, "corrupt"),
    ("ok", lambda m: tar_gz({"/abs/model.rds": m}), {}, "absolute path"),
    ("ok", lambda m: zip_bytes({"model.rds": m, "../../x.R": b"x"}), {}, "outside the bundle"),
    ("ok", _symlink_tar, {}, "is a link"),
    ("ok", _device_tar, {}, "device or FIFO"),
    ("ok", lambda m: tar_gz({"model.rds": m, **{f"{i}.txt": b"" for i in range(12)}}), {}, "more than 10 members"),
    ("ok", lambda m: tar_gz({"model.rds": m, "zeros": bytes(300_000)}), {}, "unpacks to more than 200000 bytes"),
    ("ok", lambda m: m, {"packages": "good, not a package!"}, "'not a package!' is not a valid R package name"),
]


@pytest.mark.django_db
@pytest.mark.parametrize(("name", "build", "extra", "message"), REFUSALS)
def test_refused_uploads_answer_400_saying_why_and_leave_nothing_behind(
    owner: User,
    api_client_for: Any,
    lm_rds: bytes,
    settings: Any,
    new_files: Any,
    name: str,
    build: Any,
    extra: Any,
    message: str,
) -> None:
    settings.MAX_BUNDLE_MEMBERS = 10
    settings.MAX_UNPACKED_BYTES = 200_000

    response = post(api_client_for(owner), name, build(lm_rds), **extra)

    assert response.status_code == 400
    assert message in response.json()["detail"]
    assert not ModelVersion.objects.exists()
    assert not new_files()
    assert not upload_temp_files()


@pytest.mark.django_db
def test_an_rdata_workspace_is_refused_with_advice(owner: User, api_client_for: Any, tmp_path: Path) -> None:
    path = tmp_path / "ws.RData"
    subprocess.run(
        [settings.RSCRIPT, "--vanilla", "-e", f"m <- lm(mpg ~ wt, mtcars); save(m, file = '{path}')"], check=True
    )

    response = post(api_client_for(owner), "ws", path.read_bytes())

    assert response.status_code == 400
    assert "saveRDS(model, 'model.rds')" in response.json()["detail"]


@pytest.mark.django_db
def test_an_upload_above_the_limit_answers_413_while_streaming(
    owner: User, api_client_for: Any, lm_rds: bytes, settings: Any, new_files: Any
) -> None:
    settings.MAX_UPLOAD_BYTES = 1000

    response = post(api_client_for(owner), "big", lm_rds + bytes(5000))

    assert response.status_code == 413
    assert "RDEPLOY_MAX_UPLOAD_BYTES" in response.json()["detail"]
    assert not ModelVersion.objects.exists()
    assert not new_files()
    assert not upload_temp_files()


@pytest.mark.django_db
def test_a_request_whose_length_is_over_the_limit_is_refused_before_it_is_read(
    owner: User, api_client_for: Any, settings: Any
) -> None:
    settings.MAX_UPLOAD_BYTES = 1000

    response = api_client_for(owner).generic(
        "POST", URL, b"x" * 16, content_type="multipart/form-data; boundary=b", CONTENT_LENGTH=str(64 * 1024**2)
    )

    assert response.status_code == 413


@pytest.mark.django_db
def test_a_sample_is_stored_beside_the_model(owner: User, api_client_for: Any, lm_rds: bytes) -> None:
    response = post(api_client_for(owner), "cars", lm_rds, sample=SimpleUploadedFile("rows.csv", b"wt\n2.5\n3.1\n"))

    assert response.status_code == 201
    assert ModelVersion.objects.get(pk=response.json()["id"]).sample.read() == b"wt\n2.5\n3.1\n"


def temporary_upload(name: str, content: bytes) -> TemporaryUploadedFile:
    """An upload as the doors' handler leaves it: a temporary file the storage moves into place."""
    upload = TemporaryUploadedFile(name, "application/octet-stream", len(content), None)
    upload.write(content)
    upload.seek(0)
    return upload


def upload(owner: User, model: bytes, sample: bytes) -> UploadOutcome:
    files = temporary_upload("model.rds", model), temporary_upload("rows.csv", sample)
    try:
        return model_version_upload(owner=owner, name="cars", file=files[0], sample=files[1])
    finally:
        for file in files:
            file.close()


@contextmanager
def meanwhile(suffix: str, other: Callable[[], Any]) -> Iterator[list[Any]]:
    """Runs ``other`` once, when this request moves a file whose name ends in ``suffix``
    into the storage, after the name was found free and before the rename: where two
    requests saving the same name meet. Yields [what ``other`` returned] once it ran."""
    rename = os.rename
    ran: list[Any] = []

    def placing(source: Any, destination: Any) -> None:
        if not ran and str(destination).endswith(suffix):
            ran.append(None)
            ran[0] = other()
        rename(source, destination)

    with mock.patch("django.core.files.move.os.rename", placing):
        yield ran
    assert ran, f"nothing was moved to a name ending in {suffix}"


@pytest.mark.django_db
def test_the_same_bytes_uploaded_twice_at_once_keep_the_first_rows_sample(
    owner: User, lm_rds: bytes, new_files: Any
) -> None:
    with meanwhile(".csv", lambda: upload(owner, lm_rds, b"wt\n2.5\n")) as first:
        second = upload(owner, lm_rds, b"wt\n9.9\n")

    assert first[0].created
    assert not second.created
    assert second.model_version == first[0].model_version
    kept = ModelVersion.objects.get(owner=owner, name="cars")
    assert kept.sample.read() == b"wt\n2.5\n"
    assert kept.artifact.read() == lm_rds
    # The second request's files are gone; the first's stay.
    assert new_files() == {Path(kept.artifact.path), Path(kept.sample.path)}


@pytest.mark.django_db
def test_a_failed_upload_cleans_up_only_its_own_files_never_another_rows(
    owner: User, lm_rds: bytes, new_files: Any
) -> None:
    create_row = model_intake._create_row
    first_done: list[bool] = []

    def failing_after_the_first(**arguments: Any) -> Any:
        if first_done:
            raise OperationalError("the database went away")
        return create_row(**arguments)

    def first_upload() -> UploadOutcome:
        outcome = upload(owner, lm_rds, b"wt\n2.5\n")
        first_done.append(True)
        return outcome

    with (
        mock.patch.object(model_intake, "_create_row", failing_after_the_first),
        meanwhile(".rds", first_upload),
        pytest.raises(OperationalError),
    ):
        upload(owner, lm_rds, b"wt\n9.9\n")

    kept = ModelVersion.objects.get(owner=owner, name="cars")
    assert kept.artifact.read() == lm_rds
    assert kept.sample.read() == b"wt\n2.5\n"
    assert new_files() == {Path(kept.artifact.path), Path(kept.sample.path)}


@pytest.mark.django_db
def test_other_users_cannot_see_or_delete_a_model(
    owner: User, colleague: User, staff: User, api_client_for: Any, lm_rds: bytes
) -> None:
    created = post(api_client_for(owner), "cars", lm_rds).json()
    detail = f"{URL}{created['id']}/"
    outsider = api_client_for(colleague)

    assert outsider.get(detail).status_code == 404
    assert outsider.delete(detail).status_code == 404
    assert outsider.get(URL).json()["results"] == []
    assert api_client_for(owner).get(detail).json()["id"] == created["id"]
    assert [m["id"] for m in api_client_for(staff).get(URL).json()["results"]] == [created["id"]]
    assert APIClient().get(detail).status_code == 401


@pytest.mark.django_db
def test_the_list_filters_by_name(owner: User, api_client_for: Any, lm_rds: bytes) -> None:
    client = api_client_for(owner)
    post(client, "cars", lm_rds)
    post(client, "trucks", lm_rds)

    assert [m["name"] for m in client.get(URL, {"name": "trucks"}).json()["results"]] == ["trucks"]


@pytest.mark.django_db
def test_a_name_filter_holding_a_nul_matches_nothing_on_every_database(
    owner: User, api_client_for: Any, lm_rds: bytes
) -> None:
    client = api_client_for(owner)
    post(client, "cars", lm_rds)

    response = client.get(URL, {"name": "cars\x00"})

    assert response.status_code == 200
    assert response.json()["results"] == []


@pytest.mark.django_db
def test_deleting_a_model_removes_its_row(owner: User, api_client_for: Any, lm_rds: bytes) -> None:
    client = api_client_for(owner)
    created = post(client, "cars", lm_rds, sample=SimpleUploadedFile("rows.csv", b"wt\n2.5\n")).json()

    response = client.delete(f"{URL}{created['id']}/")

    assert response.status_code == 204
    assert not ModelVersion.objects.filter(pk=created["id"]).exists()


@pytest.mark.django_db(transaction=True)
def test_deleting_a_model_deletes_its_stored_files_after_commit(
    owner: User, api_client_for: Any, lm_rds: bytes, new_files: Any
) -> None:
    client = api_client_for(owner)
    created = post(client, "cars", lm_rds, sample=SimpleUploadedFile("rows.csv", b"wt\n2.5\n")).json()
    assert len(new_files()) == 2

    assert client.delete(f"{URL}{created['id']}/").status_code == 204

    assert new_files() == set()


@pytest.mark.django_db
def test_deleting_a_model_an_endpoint_serves_answers_409(owner: User, api_client_for: Any, lm_rds: bytes) -> None:
    client = api_client_for(owner)
    created = post(client, "cars", lm_rds).json()
    make_endpoint(owner, "cars-prod", model_version=ModelVersion.objects.get(pk=created["id"]), status="live")

    response = client.delete(f"{URL}{created['id']}/")

    assert response.status_code == 409
    assert "cars-prod" in response.json()["detail"]
    assert ModelVersion.objects.filter(pk=created["id"]).exists()
    Endpoint.objects.update(status=Endpoint.Status.DELETED)
    assert client.delete(f"{URL}{created['id']}/").status_code == 409
    Endpoint.objects.all().delete()
    assert client.delete(f"{URL}{created['id']}/").status_code == 204


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_an_uploaded_random_forest_is_inspected_by_the_worker_and_becomes_ready(
    owner: User, api_client_for: Any, trained_models: Path, celery_worker: Any
) -> None:
    case_dir = trained_models / "randomforest"
    wanted = expected(case_dir)
    client = api_client_for(owner)

    created = post(
        client,
        "iris-forest",
        (case_dir / "model.rds").read_bytes(),
        sample=SimpleUploadedFile("rows.csv", rows_csv(wanted["rows"])),
    )
    body = wait_for_verdict(client, created.json()["id"], timeout=60)

    assert created.status_code == 201
    assert body["status"] == "ready", body["status_reason"]
    assert body["inspection"]["example"]["predictions"]["predictions"] == wanted["predictions"]
    assert body["inspection"]["packages"]["required"][0]["name"] == "randomForest"
    # Inspected in a container of the serving image, never by R on the host.
    assert body["inspection"]["sandbox"]["network"] == "none"
    assert body["inspection"]["sandbox"]["image"] == body["inspection"]["image"]
    # How long this takes (the goal: 3 s) is measured by benchmarks/intake_bench.py.


def test_the_openapi_schema_describes_the_models_api_without_warnings(tmp_path: Path) -> None:
    from django.core.management import call_command

    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "schema.yaml"))

    schema = (tmp_path / "schema.yaml").read_text()
    assert "/api/v1/models/{id}/:" in schema
    assert "multipart/form-data" in schema
