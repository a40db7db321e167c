"""A stand-in runtime for the gateway's tests: a tiny HTTP server echoing what reached it.

The end-to-end tests put the real R runtime behind the same routes; these tests are about
what the gateway does around it (keys, limits, headers), which an echo shows exactly."""

from __future__ import annotations

import json
import socketserver
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from django.contrib.auth.models import User

from deployer.models import Endpoint, ModelVersion
from deployer.services.endpoints import endpoint_create
from testsupport.factories import make_model_version


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        payload = json.dumps({"headers": dict(self.headers.items()), "body": body.decode()}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def address_string(self) -> str:
        return "gateway"  # a Unix socket's peer has no address

    def log_message(self, *args: object) -> None:
        pass


class UnixHTTPServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True


@contextmanager
def unix_runtime(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """The socket of a stand-in runtime answering with ``handler``, served until exit."""
    with tempfile.TemporaryDirectory(prefix="rdeploy-echo-") as directory:
        path = str(Path(directory) / "runtime.sock")
        server = UnixHTTPServer(path, handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        yield path
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def echo_socket() -> Iterator[str]:
    """The socket of a running echo runtime, as a runtime container's is reached (import
    this fixture into the test module)."""
    with unix_runtime(Echo) as path:
        yield path


def live_public(owner: User, name: str, socket_path: str, **options: object) -> str:
    model = make_model_version(owner, status=ModelVersion.Status.READY)
    issued = endpoint_create(owner=owner, name=name, model_version=model, public=True, options=options)
    Endpoint.objects.filter(pk=issued.endpoint.pk).update(status=Endpoint.Status.LIVE, runtime={"socket": socket_path})
    assert issued.api_key
    return issued.api_key
