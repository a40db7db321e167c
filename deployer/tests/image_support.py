"""Serving images for real in tests: the image every test model needs (built once per
session by the engine, as inspection and the targets build it) and containers started
from it as SageMaker starts them (`run IMAGE serve`, the model at /opt/ml/model, port 8080)."""

from __future__ import annotations

import http.client
import subprocess
import tarfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from container_templates.tests.conftest import Response
from deployer.integrations.containers import cli
from deployer.services.images import serving_image_ensure

# The packages of every model in testsupport/train_models.R (lm and glm need none).
TEST_MODEL_PACKAGES = ["randomForest", "ranger", "rpart", "e1071"]


@dataclass(frozen=True)
class ServingContainer:
    name: str
    port: int

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> Response:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            return Response(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
        finally:
            connection.close()

    def logs(self) -> str:
        return cli.check(["logs", self.name])


@pytest.fixture(scope="session")
def serving_image() -> str:
    """The serving image for every test model, built once per session (reused when its
    tag exists, as every caller of serving_image_ensure does)."""
    return serving_image_ensure(packages=TEST_MODEL_PACKAGES)


def unpack_model_data(tarball: Path, destination: Path) -> Path:
    """What SageMaker does with ModelDataUrl before the container starts."""
    destination.mkdir(parents=True)
    with tarfile.open(tarball) as archive:
        archive.extractall(destination, filter="data")
    return destination


@pytest.fixture
def serve() -> Iterator[Any]:
    """serve(image, model_dir) -> a ServingContainer answering /ping; removed after the test."""
    started: list[str] = []

    def start(image: str, model_dir: Path, timeout: float = 60) -> ServingContainer:
        name = f"rdeploy-test-serving-{uuid.uuid4().hex[:8]}"
        started.append(name)
        # SageMaker's `docker run <image> serve`; the name and labels only let the session
        # find it. No host port given: the engine binds one it finds free (none can take it
        # between a pick and the bind) and `port` says which.
        cli.check(
            [
                "run",
                "--detach",
                "--name",
                name,
                *cli.installation_labels("test-serving"),
                "--volume",
                f"{model_dir}:/opt/ml/model:ro",
                "--publish",
                "127.0.0.1::8080",
                image,
                "serve",
            ]
        )
        published = cli.check(["port", name, "8080/tcp"]).split()[0]
        container = ServingContainer(name, int(published.rsplit(":", 1)[1]))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if container.request("GET", "/ping").status == 200:
                    return container
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"{container.name} did not answer /ping within {timeout} s:\n{container.logs()}")

    yield start
    for name in started:
        cli.remove(name)


def make_cran_repository(directory: Path, *, package: str, answer: int, install_seconds: int = 0) -> str:
    """A CRAN-like file:// repository holding one small source package built by R, whose
    installation takes ``install_seconds`` (its code runs when R installs it)."""
    source = directory / "source" / package
    (source / "R").mkdir(parents=True)
    (source / "DESCRIPTION").write_text(
        f"Package: {package}\nVersion: 0.1.0\nTitle: A Test Package\nDescription: Answers.\n"
        "License: MIT\nAuthor: rdeploy\nMaintainer: rdeploy <rdeploy@example.org>\n"
    )
    (source / "NAMESPACE").write_text("export(answer)\n")
    (source / "R" / "answer.R").write_text(f"Sys.sleep({install_seconds})\nanswer <- function() {answer}L\n")
    contrib = directory / "repo" / "src" / "contrib"
    contrib.mkdir(parents=True)
    subprocess.run(["R", "CMD", "build", "--no-manual", str(source)], cwd=contrib, check=True, capture_output=True)
    subprocess.run(
        ["Rscript", "-e", f"tools::write_PACKAGES('{contrib}', type = 'source')"], check=True, capture_output=True
    )
    return f"file://{directory / 'repo'}"


def nothing_installs(package: str) -> bool:
    """No process of a stopped build survives: none is still installing ``package``."""
    return subprocess.run(["pgrep", "-f", package], check=False, capture_output=True).returncode == 1
