"""One limit for a whole upload request, on both upload doors (issue 12, finding 6): the REST
API and the dashboard share artifacts.uploads.HashingUploadHandler, which refuses a Content-Length that
cannot fit before reading the body, counts the bytes of all the request's files together
against RDEPLOY_MAX_UPLOAD_BYTES, and receives only the expected file fields, once each."""

from __future__ import annotations

import html
import http.client
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from rest_framework.test import APIClient

from deployer.models import ModelVersion
from deployer.services.tokens import api_token_create
from deployer.tests.archive_bombs import MODEL
from deployer.tests.intake_support import MODELS_URL
from testsupport.services import WebServer

DOORS = {"api": MODELS_URL, "dashboard": "/models/upload/"}
LIMIT = 300_000


def client_for(door: str, owner: User) -> Client:
    """A client signed in for `door`: an API client sending a fresh token, or a dashboard session."""
    if door == "api":
        api = APIClient()
        api.credentials(HTTP_AUTHORIZATION=f"Token {api_token_create(user=owner).secret}")
        return api
    dashboard = Client()
    dashboard.force_login(owner)
    return dashboard


def post(door: str, owner: User, data: dict[str, Any]) -> Any:
    client = client_for(door, owner)
    if isinstance(client, APIClient):
        return client.post(DOORS[door], data, format="multipart")
    return client.post(DOORS[door], data)


def leftovers() -> set[Path]:
    """Files under the upload temporaries' directory and the stored artifacts."""
    roots = [Path(settings.FILE_UPLOAD_TEMP_DIR), Path(settings.DATA_DIR) / "artifacts"]
    return {path for root in roots if root.exists() for path in root.rglob("*") if path.is_file()}


@pytest.fixture
def small_limit(settings: Any) -> None:
    settings.MAX_UPLOAD_BYTES = LIMIT


both_doors = pytest.mark.parametrize("door", DOORS)


@pytest.mark.django_db
@pytest.mark.usefixtures("small_limit")
@both_doors
def test_a_content_length_over_the_limit_is_refused_with_413_before_the_body_is_read(door: str, owner: User) -> None:
    # 16 bytes of body under a 64 MiB Content-Length: reading the body would fail, not answer 413.
    response = client_for(door, owner).generic(
        "POST",
        DOORS[door],
        b"x" * 16,
        content_type="multipart/form-data; boundary=b",
        CONTENT_LENGTH=str(64 * 1024**2),
    )

    assert response.status_code == 413
    assert f"larger than the upload limit of {LIMIT} bytes" in response.content.decode()


@pytest.mark.django_db
@pytest.mark.usefixtures("small_limit")
@both_doors
def test_two_files_under_the_limit_each_but_over_it_together_are_refused_with_413(door: str, owner: User) -> None:
    before = leftovers()
    # 300,003 bytes of files: within the Content-Length's slack, so the counter must see them.
    model = SimpleUploadedFile("model.rds", MODEL + bytes(160_000 - len(MODEL)))
    sample = SimpleUploadedFile("rows.csv", b"wt\n" + b"2.5\n" * 35_000)

    response = post(door, owner, {"name": "cars", "file": model, "sample": sample})

    assert response.status_code == 413
    assert "for the model and the sample together" in response.content.decode()
    assert not ModelVersion.objects.exists()
    assert leftovers() == before


@pytest.mark.django_db
@pytest.mark.usefixtures("small_limit")
@both_doors
@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"extra": b"x" * 1000}, "unexpected file field 'extra' (expected: file, sample)"),
        ({"sample": [b"wt\n2.5\n", b"wt\n3.1\n"]}, "sends the file field 'sample' more than once"),
    ],
    ids=["unexpected field", "field twice"],
)
def test_an_unexpected_or_repeated_file_field_is_refused_with_400_saying_which(
    door: str, owner: User, files: dict[str, Any], message: str
) -> None:
    before = leftovers()
    data: dict[str, Any] = {"name": "cars", "file": SimpleUploadedFile("model.rds", MODEL)}
    for field, content in files.items():
        contents = content if isinstance(content, list) else [content]
        data[field] = [SimpleUploadedFile(f"{field}-{n}.bin", each) for n, each in enumerate(contents)]

    response = post(door, owner, data)

    assert response.status_code == 400
    assert message in html.unescape(response.content.decode())
    assert not ModelVersion.objects.exists()
    assert leftovers() == before


@pytest.mark.django_db(transaction=True)
@both_doors
def test_the_live_server_answers_413_to_an_oversized_content_length_without_waiting_for_the_body(
    door: str, owner: User, web_server: WebServer
) -> None:
    headers = {
        "Content-Type": "multipart/form-data; boundary=b",
        "Content-Length": str(settings.MAX_UPLOAD_BYTES + 1024**2),
    }
    if door == "api":
        headers["Authorization"] = f"Token {api_token_create(user=owner).secret}"
    else:
        browser = client_for(door, owner)
        session = browser.cookies[settings.SESSION_COOKIE_NAME].value
        headers["Cookie"] = f"{settings.SESSION_COOKIE_NAME}={session}; {settings.CSRF_COOKIE_NAME}={'a' * 32}"
    connection = http.client.HTTPConnection("127.0.0.1", web_server.port, timeout=30)
    try:
        # Headers only: a server that read the body first would wait out the timeout instead.
        connection.putrequest("POST", DOORS[door])
        for header, value in headers.items():
            connection.putheader(header, value)
        connection.endheaders()
        response = connection.getresponse()
        body = response.read().decode()
    finally:
        connection.close()

    assert response.status == 413
    assert "RDEPLOY_MAX_UPLOAD_BYTES" in body
