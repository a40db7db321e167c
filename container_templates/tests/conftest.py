"""Fixtures for the R serving runtime: models trained by real R at test time (testsupport/r_models.py), and `serve`
started on a free port (another one when HAProxy could not bind it: see PORT_ATTEMPTS).

Nothing here needs Django: run these tests with `pytest -p no:django container_templates` too.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from testsupport.ports import PORT_ATTEMPTS, free_port
from testsupport.r_models import expected as expected_of

RUNTIME_DIR = Path(__file__).resolve().parent.parent / "runtime"
SERVE = RUNTIME_DIR / "serve"


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Server:
    """A running `serve` process: its port, its output file and its process."""

    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | str | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 30,
    ) -> Response:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            data = body.encode() if isinstance(body, str) else body
            connection.request(method, path, body=data, headers=headers or {})
            response = connection.getresponse()
            return Response(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
        finally:
            connection.close()

    def invoke(self, body: bytes | str, content_type: str, **headers: str) -> Response:
        all_headers = {"Content-Type": content_type, **{k.replace("_", "-"): v for k, v in headers.items()}}
        return self.request("POST", "/invocations", body, all_headers)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def wait_until_ready(server: Server, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"serve exited with {server.process.returncode}:\n{server.log()}")
        try:
            if server.request("GET", "/ping", timeout=2).status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"serve did not answer /ping within {timeout} s:\n{server.log()}")


def stop(server: Server) -> None:
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait()


def launch(model_dir: Path, port: int, log_path: Path, env: dict[str, str]) -> Server:
    full_env = {
        **os.environ,
        "RDEPLOY_MODEL_DIR": str(model_dir),
        "SAGEMAKER_BIND_TO_PORT": str(port),
        "RDEPLOY_BIND": "127.0.0.1",
        **env,
    }
    with log_path.open("wb") as log:
        # A process group of its own, so a failed test can still kill everything.
        process = subprocess.Popen(
            [str(SERVE)], env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    return Server(port, process, log_path, env)


def listens(server: Server, timeout: float = 30) -> bool:
    """Whether serve's HAProxy bound the port (it answers 503 until the model is loaded);
    False when another process took the port first (serve then exits)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = server.log()
        if "cannot bind socket" in log:
            stop(server)
            return False
        if "Loading success." in log:
            return True
        if server.process.poll() is not None:
            raise RuntimeError(f"serve exited with {server.process.returncode}:\n{log}")
        time.sleep(0.05)
    raise TimeoutError(f"serve's HAProxy did not start within {timeout} s:\n{server.log()}")


@pytest.fixture(scope="session")
def models(r_models: Path) -> Path:
    """Directory of trained model directories, one per case of testsupport/train_models.R."""
    return r_models


@pytest.fixture(scope="session")
def start_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Server]]:
    """start_server(model_dir, wait=True, **env) -> a running Server; every one is stopped at session end."""
    started: list[Server] = []

    def start(model_dir: Path, wait: bool = True, **env: str) -> Server:
        # HAProxy cannot bind port 0 and say which it got: a free port, another if taken.
        for _ in range(PORT_ATTEMPTS):
            server = launch(model_dir, free_port(), tmp_path_factory.mktemp("serve") / "serve.log", env)
            started.append(server)
            if listens(server):
                break
        else:
            raise RuntimeError(f"serve found no free port:\n{server.log()}")
        if wait:
            wait_until_ready(server)
        return server

    yield start
    for server in started:
        stop(server)


@pytest.fixture(scope="session")
def served(models: Path, start_server: Callable[..., Server]) -> Callable[[str], Server]:
    """served(case) -> one shared server per model case, started on first use."""
    servers: dict[str, Server] = {}

    def get(case: str) -> Server:
        if case not in servers:
            servers[case] = start_server(models / case)
        return servers[case]

    return get


@pytest.fixture(scope="session")
def expected(models: Path) -> Callable[[str], dict[str, Any]]:
    """expected(case) -> {"rows": [...], "predictions": [...], "probabilities"?: [...]} from R itself."""

    def load(case: str) -> dict[str, Any]:
        return expected_of(models / case)

    return load


@pytest.fixture
def stop_server() -> Callable[[Server], None]:
    return stop
