"""Holes a red-team pass over issue 12's fixes found, each pinned by a test that fails without
its fix."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings
from django.contrib.auth.models import User
from django.core.cache import cache
from django.core.files.uploadedfile import SimpleUploadedFile, TemporaryUploadedFile
from django.test import Client

from deployer.artifacts import ArtifactRejected
from deployer.artifacts.bundles import inspect_bundle
from deployer.models import Endpoint
from deployer.services.login_throttle import client_address
from deployer.tests.archive_bombs import MODEL
from deployer.tests.gateway_support import live_public, unix_runtime

pytestmark = pytest.mark.django_db

LOGIN = "/accounts/login/"


@pytest.fixture
def stored_uploads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the temporary files Django's upload handling creates in the test."""
    created: list[str] = []
    original = TemporaryUploadedFile.__init__

    def recording(self: TemporaryUploadedFile, name: str, *args: Any, **kwargs: Any) -> None:
        created.append(name)
        original(self, name, *args, **kwargs)

    monkeypatch.setattr(TemporaryUploadedFile, "__init__", recording)
    return created


def test_a_form_without_files_stores_none(stored_uploads: list[str]) -> None:
    """The anonymous sign-in page (any form but the two upload doors) stores no file sent to it:
    Django's default handlers wrote it to FILE_UPLOAD_TEMP_DIR, whatever its size."""
    big = SimpleUploadedFile("filler.bin", b"\0" * (3 * 1024 * 1024))
    response = Client().post(LOGIN, {"username": "someone", "password": "wrong", "filler": big})
    assert stored_uploads == []
    assert response.status_code != 500


def test_a_form_body_above_the_field_limit_is_refused_unread(settings: Any, stored_uploads: list[str]) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024
    big = SimpleUploadedFile("filler.bin", b"\0" * (512 * 1024))
    response = Client().post(LOGIN, {"username": "someone", "password": "wrong", "filler": big})
    assert response.status_code == 400
    assert stored_uploads == []


PAGE = b"<html><body><h1>Sign in again</h1><script>alert(document.domain)</script></body></html>"
# A browser takes the last of comma-separated media types (Fetch's "extract a MIME type"):
# this answer renders as text/html, while its first type looks like JSON.
LISTED_TYPES = "application/json;x=1,text/html"


class ListedTypes(BaseHTTPRequestHandler):
    """A runtime answering an HTML page under a Content-Type that starts like JSON."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", LISTED_TYPES)
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def listed_types_socket() -> Iterator[str]:
    with unix_runtime(ListedTypes) as path:
        yield path


def test_an_answer_whose_type_lists_html_after_json_is_a_download(owner: User, listed_types_socket: str) -> None:
    key = live_public(owner, "listed", listed_types_socket)
    response = Client().post("/e/listed/invocations", b"{}", content_type="application/json", HTTP_X_API_KEY=key)
    assert response.status_code == 200
    assert response["Content-Security-Policy"] == "sandbox"
    assert response["Content-Disposition"] == "attachment"


@pytest.mark.parametrize(
    ("first", "second"),
    [
        # Two IPv4 clients of a dual-stack listener: the same /64 (::/64) counted them as one.
        ("::ffff:198.51.100.7", "::ffff:203.0.113.9"),
    ],
)
def test_ipv4_mapped_clients_are_counted_apart(first: str, second: str) -> None:
    assert client_address({"REMOTE_ADDR": first}) == first.removeprefix("::ffff:")
    assert client_address({"REMOTE_ADDR": first}) != client_address({"REMOTE_ADDR": second})


@pytest.mark.parametrize(
    "forwarded",
    ["198.51.100.7:1111", "198.51.100.7:2222", "[2001:db8::1]:443", "[2001:db8::2]:8443", "2001:db8::3"],
)
def test_a_forwarded_address_with_a_port_counts_as_its_address(settings: Any, forwarded: str) -> None:
    """A proxy writing ip:port into X-Forwarded-For must not give each source port of one
    guesser its own allowance."""
    settings.TRUST_X_FORWARDED_FOR = True
    meta = {"REMOTE_ADDR": "127.0.0.1", "HTTP_X_FORWARDED_FOR": f"10.9.9.9, {forwarded}"}
    expected = "198.51.100.7" if forwarded.startswith("198.") else "2001:db8::/64"
    assert client_address(meta) == expected


def test_a_chart_planted_in_redis_is_not_served(owner: User, listed_types_socket: str) -> None:
    """The dashboard's chart fragment is HTML kept in the cache and served as it is read: a
    value written into Redis by someone holding its password (what the JSON serializer
    defends against) must not become a script in the dashboard of the endpoint's viewers,
    staff included."""
    live_public(owner, "charted", listed_types_socket)
    endpoint = Endpoint.objects.get(name="charted")
    planted = '<div id="chart"><script>fetch("/tokens/")</script></div>'
    # Written as someone holding Redis's password but not the installation's secret key would.
    key = cache.make_and_validate_key(f"webui:chart:{endpoint.pk}:{endpoint.created_at.timestamp()}")
    redis.Redis.from_url(settings.REDIS_URL).set(key, json.dumps(planted), ex=60)
    dashboard = Client()
    dashboard.force_login(owner)
    response = dashboard.get("/endpoints/charted/?fragment=chart", HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    assert b"<script>" not in response.content
    assert b'id="chart"' in response.content


def test_a_tar_gz_of_many_gzip_members_is_refused_early(tmp_path: Path) -> None:
    """Each gzip member costs Python work whatever it holds: 20-byte empty members filled a
    2 GiB upload with 100 million of them, minutes of a web thread's CPU (the upload is
    inspected in the request). A real tar.gz has one member, a concatenation a few."""
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        info = tarfile.TarInfo("model.rds")
        info.size = len(MODEL)
        tar.addfile(info, io.BytesIO(MODEL))
    raw = archive.getvalue()
    path = tmp_path / "members.tar.gz"
    path.write_bytes(gzip.compress(raw[:512], mtime=0) + gzip.compress(b"", mtime=0) * 5000 + gzip.compress(raw[512:]))
    with pytest.raises(ArtifactRejected, match="gzip members"):
        inspect_bundle(path, "tar.gz")
    # A few concatenated members (cat a.gz b.gz) still read as one stream.
    path.write_bytes(gzip.compress(raw[:512], mtime=0) + gzip.compress(raw[512:], mtime=0))
    assert inspect_bundle(path, "tar.gz").files == ("model.rds",)
