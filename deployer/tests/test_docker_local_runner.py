"""The local target's docker runner (``options.runner = "docker"``).

No Docker engine runs here, so these tests check the engine's inputs: a recording
``docker`` executable first on PATH appends each call's arguments and stdin to a file;
its ``run`` plays the container by serving /ping and /invocations on the published
loopback port, so the pipeline, the gateway and teardown run for real around it.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import User

from deployer.integrations import docker_engine, processes
from deployer.models import Deployment, DeploymentStep, Endpoint, ExternalResource, LogLine
from deployer.services.pipeline import deployment_advance
from deployer.targets.local import container_name, image_build_dir, process_identifier, rollout_dir
from deployer.targets.sagemaker import image_build_context
from deployer.tests.sagemaker_support import drive, latest, ready_model

pytestmark = pytest.mark.django_db
# Runtime processes are found machine-wide by "<endpoint>-<deployment id>": a name of its
# own keeps a concurrent test session's clean-up away from this one's runtimes.
NAME = f"box-{uuid.uuid4().hex[:10]}"

RECORDER = """#!{python}
import base64, http.server, json, pathlib, sys, time
here = pathlib.Path({here!r})
argv = sys.argv[1:]
stdin = base64.b64encode(sys.stdin.buffer.read() if argv[0] == "build" else b"").decode()
with (here / "calls.jsonl").open("a") as record:
    record.write(json.dumps({{"argv": argv, "stdin": stdin}}) + "\\n")
if argv[:2] == ["image", "inspect"]:
    if not (here / "image-present").exists():
        print("Error: No such image: " + argv[-1], file=sys.stderr)
        sys.exit(1)
    print("sha256:1234")
elif argv[0] == "build":
    print("#6 [3/5] RUN Rscript /tmp/rdeploy-build/install_packages.R", flush=True)
    while (here / "hold-build").exists():
        time.sleep(0.05)
    (here / "image-present").touch()
elif argv[0] == "rm":
    print("Error response from daemon: No such container: " + argv[-1], file=sys.stderr)
    sys.exit(1)
elif argv[0] == "run":
    port = int(argv[argv.index("--publish") + 1].split(":")[1])

    class Container(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def answer(self, body):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            self.answer(b"")

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.answer(b'["setosa"]')

    print("rdeploy: model loaded", flush=True)
    http.server.ThreadingHTTPServer(("127.0.0.1", port), Container).serve_forever()
"""


class FakeDocker:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def calls(self) -> list[dict[str, Any]]:
        path = self.directory / "calls.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def commands(self) -> list[str]:
        return [" ".join(call["argv"][:2]) if call["argv"][0] == "image" else call["argv"][0] for call in self.calls()]


@pytest.fixture
def fake_docker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeDocker]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "docker"
    script.write_text(RECORDER.format(python=sys.executable, here=str(tmp_path)))
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    yield FakeDocker(tmp_path)
    # A held build ends even when a test fails before releasing it.
    (tmp_path / "hold-build").unlink(missing_ok=True)


def test_the_docker_runner_is_refused_where_no_docker_engine_answers(
    owner: User, api_client_for: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    model = ready_model(owner)
    client = api_client_for(owner)

    refused = client.post(
        "/api/v1/endpoints/", {"name": NAME, "model": model.pk, "options": {"runner": "docker"}}, format="json"
    )
    unknown = client.post(
        "/api/v1/endpoints/", {"name": NAME, "model": model.pk, "options": {"runner": "podman"}}, format="json"
    )

    assert refused.status_code == 400
    assert "docker info" in refused.content.decode()
    assert unknown.status_code == 400
    assert "runner" in unknown.content.decode()
    assert not Endpoint.objects.exists()


def test_the_docker_runner_builds_the_image_runs_it_with_the_model_mounted_and_removes_it(
    owner: User, api_client_for: Any, fake_docker: FakeDocker
) -> None:
    model = ready_model(owner)
    client = api_client_for(owner)
    response = client.post(
        "/api/v1/endpoints/",
        {"name": NAME, "model": model.pk, "options": {"runner": "docker", "workers": 3}},
        format="json",
    )
    assert response.status_code == 202, response.content

    deployment = drive(latest(NAME))

    assert deployment.status == Deployment.Status.SUCCEEDED, list(LogLine.objects.values_list("message", flat=True))
    context = image_build_context(model)
    image = f"rdeploy-runtime:{context.tag}"
    assert fake_docker.commands() == ["info", "image inspect", "build", "rm", "run"]
    _, inspect, build, remove, run = fake_docker.calls()
    assert inspect["argv"][-1] == image
    assert build["argv"] == ["build", "--pull", "--tag", image, "-"]
    assert base64.b64decode(build["stdin"]) == context.tar_gz()
    identifier = process_identifier(deployment)
    name = container_name(identifier)
    assert name == f"rdeploy-{settings.INSTALLATION_ID}-{NAME}-{deployment.pk}"
    assert remove["argv"] == ["rm", "--force", name]
    port = Endpoint.objects.get(name=NAME).runtime["port"]
    assert run["argv"] == [
        "run",
        "--rm",
        "--name",
        name,
        "--publish",
        f"127.0.0.1:{port}:8080",
        "--volume",
        f"{rollout_dir(deployment) / 'model'}:/opt/ml/model:ro",
        "--env",
        "RDEPLOY_GRACE_SECONDS=5",
        "--env",
        "RDEPLOY_MAX_WORKERS=3",
        image,
        "serve",
    ]
    assert (rollout_dir(deployment) / "model" / "model.rds").read_bytes() == b"model-1"
    assert not image_build_dir(deployment).exists()
    builds = LogLine.objects.filter(deployment=deployment, source=LogLine.Source.BUILD)
    assert "#6 [3/5] RUN Rscript /tmp/rdeploy-build/install_packages.R" in builds.values_list("message", flat=True)
    invoked = client.generic(
        "POST", f"/api/v1/endpoints/{NAME}/invocations", b'[{"Sepal.Length": 5.1}]', content_type="application/json"
    )
    assert (invoked.status_code, invoked.content) == (200, b'["setosa"]')

    assert client.delete(f"/api/v1/endpoints/{NAME}/").status_code == 202
    assert drive(latest(NAME)).status == Deployment.Status.SUCCEEDED
    assert fake_docker.calls()[-1]["argv"] == ["rm", "--force", name]
    assert processes.find(identifier) == []
    assert not processes.port_is_open(port)
    assert not ExternalResource.objects.filter(deleted_at__isnull=True).exists()


def test_the_docker_runner_reuses_an_image_the_engine_already_has(
    owner: User, api_client_for: Any, fake_docker: FakeDocker
) -> None:
    (fake_docker.directory / "image-present").touch()
    model = ready_model(owner)
    api_client_for(owner).post(
        "/api/v1/endpoints/", {"name": NAME, "model": model.pk, "options": {"runner": "docker"}}, format="json"
    )

    deployment = drive(latest(NAME))

    assert deployment.status == Deployment.Status.SUCCEEDED, deployment.error
    assert fake_docker.commands() == ["info", "image inspect", "rm", "run"]
    processes.stop(process_identifier(deployment), grace=1)


def test_deleting_the_endpoint_stops_an_image_build_still_running(
    owner: User, api_client_for: Any, fake_docker: FakeDocker
) -> None:
    (fake_docker.directory / "hold-build").touch()
    model = ready_model(owner)
    client = api_client_for(owner)
    client.post("/api/v1/endpoints/", {"name": NAME, "model": model.pk, "options": {"runner": "docker"}}, format="json")
    rollout = latest(NAME)
    build = docker_engine.job_marker(image_build_dir(rollout))
    deadline = time.monotonic() + 30
    while "build" not in fake_docker.commands():
        assert time.monotonic() < deadline
        DeploymentStep.objects.filter(deployment=rollout).update(next_check_at=None)
        Deployment.objects.filter(pk=rollout.pk).update(lease_until=None)
        deployment_advance(deployment_id=rollout.pk)
        time.sleep(0.1)
    assert processes.find(build)
    Deployment.objects.filter(pk=rollout.pk).update(lease_until=None)

    assert client.delete(f"/api/v1/endpoints/{NAME}/").status_code == 202
    assert drive(latest(NAME)).status == Deployment.Status.SUCCEEDED

    assert processes.find(build) == []
    assert not rollout_dir(rollout).exists()
    assert "run" not in fake_docker.commands()
