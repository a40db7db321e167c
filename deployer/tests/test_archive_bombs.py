"""Archive bombs against the web process (issue 12, finding 1): tar headers tarfile would read
whole, zip central directories far larger than their members need, gzip that inflates a
thousandfold. Each is refused with a reason through both upload doors, leaves nothing behind,
and checking it costs the process only a little memory."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
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
from deployer.tests import archive_bombs
from deployer.tests.intake_support import MODELS_URL

MiB = 1024 * 1024

# name, archive (small enough to upload in a test), what the refusal says
BOMBS: list[tuple[str, Callable[[], bytes], str]] = [
    ("long-name", lambda: archive_bombs.long_name_bomb(8 * MiB), "long-name header of 8388608 bytes"),
    ("pax", lambda: archive_bombs.pax_bomb(8 * MiB), "PAX header of 8388608 bytes"),
    ("header-chain", lambda: archive_bombs.long_name_chain(2000), "long-name or PAX headers in a row"),
    ("gzip", lambda: archive_bombs.gzip_bomb(64 * MiB), "unpacks to more than 1048576 bytes"),
    ("zip-entries", lambda: archive_bombs.zip_with_directory(5000), "more than 10 members"),
    (
        "zip-directory",
        lambda: archive_bombs.zip_with_directory(5, extra=60_000, declared=1),
        "central directory is 300",
    ),
    ("zip-comment", lambda: archive_bombs.zip_with_directory(1, comment=65_535), "comment of 65535 bytes"),
]


def data_dir_files() -> set[Path]:
    """Every file under the session's data directory: artifacts, upload temporaries, scratch."""
    return {path for path in Path(settings.DATA_DIR).rglob("*") if path.is_file()}


@pytest.fixture
def small_bundles(settings: Any) -> None:
    settings.MAX_BUNDLE_MEMBERS = 10
    settings.MAX_UNPACKED_BYTES = MiB


def upload_through(door: str, owner: User, content: bytes) -> tuple[int, str]:
    """Uploads `content` as a model through the REST API or the dashboard: status and body."""
    upload = SimpleUploadedFile("bundle.bin", content)
    if door == "api":
        api = APIClient()
        api.credentials(HTTP_AUTHORIZATION=f"Token {api_token_create(user=owner).secret}")
        answer = api.post(MODELS_URL, {"name": "bomb", "file": upload}, format="multipart")
        return answer.status_code, answer.content.decode()
    dashboard = Client()
    dashboard.force_login(owner)
    response = dashboard.post("/models/upload/", {"name": "bomb", "file": upload})
    return response.status_code, response.content.decode()


@pytest.mark.django_db
@pytest.mark.usefixtures("small_bundles")
@pytest.mark.parametrize("door", ["api", "dashboard"])
@pytest.mark.parametrize(("kind", "build", "message"), BOMBS, ids=[bomb[0] for bomb in BOMBS])
def test_an_uploaded_archive_bomb_is_refused_with_400_saying_why_and_leaves_nothing(
    owner: User, door: str, kind: str, build: Callable[[], bytes], message: str
) -> None:
    before = data_dir_files()

    status, body = upload_through(door, owner, build())

    assert status == 400, body
    assert message in body
    assert not ModelVersion.objects.exists()
    assert data_dir_files() == before


# Checks a file as model_version_upload does (sniff, then the bundle), with rdeploy's default
# limits, in a fresh process: prints how much its peak memory grew and what it answered.
PROBE = """
import json, resource, sys
from pathlib import Path
from deployer.artifacts import ArtifactRejected, bundles, sniffing
from deployer.artifacts.archives import BundleLimits

path = Path(sys.argv[1])
limits = BundleLimits(max_members=1000, max_unpacked_bytes=4 * 1024**3)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    bundles.inspect_bundle(path, sniffing.sniff_file(path).kind, limits)
    answer = "accepted"
except ArtifactRejected as exc:
    answer = str(exc)
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(json.dumps({"grown_kib": grown, "answer": answer}))
"""

# Far above what the checks need (a few MiB of buffers), far below what today's bombs cost.
MEMORY_BOUND_MIB = 48

HEAVY: list[tuple[str, Callable[[], bytes], str]] = [
    # ~200 KB of gzip each: tarfile alone would hold 400+ MiB.
    ("long-name", lambda: archive_bombs.long_name_bomb(200 * MiB), "long-name header"),
    ("pax", lambda: archive_bombs.pax_bomb(200 * MiB), "PAX header"),
    # 16 MB of directory: zipfile alone would make 300,000 objects.
    ("zip-entries", lambda: archive_bombs.zip_with_directory(300_000), "more than 1000 members"),
    # 64 MB of extra fields, one entry declared: zipfile alone would read and keep them all.
    ("zip-directory", lambda: archive_bombs.zip_with_directory(1000, extra=65_535, declared=1), "central directory"),
]


@pytest.mark.parametrize(("kind", "build", "message"), HEAVY, ids=[bomb[0] for bomb in HEAVY])
def test_checking_an_archive_bomb_keeps_the_process_memory_flat(
    tmp_path: Path, kind: str, build: Callable[[], bytes], message: str
) -> None:
    path = tmp_path / "bundle"
    path.write_bytes(build())

    probe = subprocess.run(
        [sys.executable, "-c", PROBE, str(path)],
        capture_output=True,
        text=True,
        check=True,
        cwd=settings.BASE_DIR,
    )

    outcome = json.loads(probe.stdout)
    assert message in outcome["answer"]
    assert outcome["grown_kib"] < MEMORY_BOUND_MIB * 1024, f"{kind}: peak memory grew {outcome['grown_kib']} KiB"
