"""moto in server mode: a real HTTP endpoint for every AWS call the tests make.

The session's server listens on the port testsupport.env picked (``AWS_ENDPOINT_URL``
already points at it), so the test process and every worker it starts talk to the same
server; a server of a test's own binds port 0 and reads back which port it got. Also a small
fault-injecting HTTP proxy that answers the first N matching requests with an AWS
throttling error and forwards everything else to moto, so botocore's real retry logic
is exercised end to end; and, for moto's gaps, a Stubber limited to one operation and a
stand-in for SageMaker's UpdateEndpoint.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from botocore.awsrequest import AWSResponse
from botocore.stub import Stubber
from moto.server import ThreadedMotoServer

from testsupport.ports import PORT_ATTEMPTS

ACCOUNT_ID = "123456789012"


class _ThreadedMoto(ThreadedMotoServer):
    """moto's threaded server, except that a port it cannot bind ends start() with the
    error, where moto's would wait forever (werkzeug exits the server's thread)."""

    bind_error: BaseException | None = None

    def _server_entry(self) -> None:
        try:
            super()._server_entry()
        except (OSError, SystemExit) as exc:
            self.bind_error = exc
            self._server_ready_event.set()


class MotoServer:
    """moto on ``port``; None: the session's (RDEPLOY_TEST_MOTO_PORT); 0: a port it binds
    itself, read back by start() (``port`` and ``url`` name it from then on)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = int(os.environ["RDEPLOY_TEST_MOTO_PORT"]) if port is None else port
        self._server = _ThreadedMoto(ip_address="127.0.0.1", port=self.port, verbose=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        # One access-log line per AWS call would drown the test output.
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        # Port 0 is bound by the server itself, so nothing can take it first. A fixed port
        # (AWS_ENDPOINT_URL names it to every worker) another process may hold for a moment
        # (a free-port probe): try again, then say so.
        for _ in range(1 if self.port == 0 else PORT_ATTEMPTS):
            self._server = _ThreadedMoto(ip_address="127.0.0.1", port=self.port, verbose=False)
            self._server.start()
            if self._server.bind_error is None:
                self.port = self._server.get_host_and_port()[1]
                self.configure()
                return
            time.sleep(0.5)
        raise RuntimeError(f"moto could not listen on 127.0.0.1:{self.port}") from self._server.bind_error

    def stop(self) -> None:
        self._server.stop()

    def _post(self, path: str, payload: dict[str, Any] | None = None) -> None:
        data = json.dumps(payload or {}).encode()
        request = urllib.request.Request(  # noqa: S310 (local moto)
            f"{self.url}{path}", data=data, method="POST", headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 (local moto)
            response.read()

    def configure(self) -> None:
        # Lambda functions are created and invoked without Docker (none runs here).
        self._post("/moto-api/config", {"lambda": {"use_docker": False}})

    def reset(self) -> None:
        self._post("/moto-api/reset")
        self.configure()

    def queue_endpoint_results(self, *results: dict[str, Any], region: str = "us-east-1") -> None:
        """What the next ``invoke_endpoint`` calls answer (moto runs no container)."""
        self._post(
            "/moto-api/static/sagemaker/endpoint-results",
            {"account_id": ACCOUNT_ID, "region": region, "results": list(results)},
        )


class SingleCallStubber(Stubber):
    """A botocore Stubber limited to one operation, for exactly the calls moto lacks.

    Queued answers are given to ``operation`` in order; every other call, and
    ``operation`` once the queue is empty, goes to moto as usual.
    """

    def __init__(self, client: Any, operation: str) -> None:
        super().__init__(client)
        self.operation = operation

    def _mine(self, model: Any) -> bool:
        return bool(model.name == self.operation and self._queue)

    def _assert_expected_params(self, model: Any, params: Any, context: Any, **kwargs: Any) -> None:
        if self._mine(model):
            super()._assert_expected_params(model, params, context, **kwargs)

    def _get_response_handler(self, model: Any, params: Any, context: Any, **kwargs: Any) -> Any:
        if self._mine(model):
            return super()._get_response_handler(model, params, context, **kwargs)
        return None


class EndpointUpdates:
    """SageMaker's ``UpdateEndpoint`` played for moto, which lacks it (HTTP 500): each call
    switches moto's endpoint to the new config through moto's own ``create_endpoint`` (a
    duplicate create overwrites; the endpoint's tags are passed again, as an update keeps
    them), as SageMaker finishing the update would, and is kept in
    ``calls`` (the request's parameters). Registered last, so any other ``before-call``
    handler (the fault tests' kill hook) sees the call first."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.calls: list[dict[str, Any]] = []

    def _update(self, params: dict[str, Any], **kwargs: Any) -> tuple[AWSResponse, dict[str, Any]]:
        request = json.loads(params["body"])
        # An update keeps the endpoint's tags; moto's overwriting create would drop them.
        arn = self.client.describe_endpoint(EndpointName=request["EndpointName"])["EndpointArn"]
        tags = self.client.list_tags(ResourceArn=arn)["Tags"]
        self.client.create_endpoint(
            EndpointName=request["EndpointName"], EndpointConfigName=request["EndpointConfigName"], Tags=tags
        )
        self.calls.append(request)
        arn = f"arn:aws:sagemaker:{self.client.meta.region_name}:{ACCOUNT_ID}:endpoint/{request['EndpointName']}"
        return AWSResponse(None, 200, {}, None), {"EndpointArn": arn}

    def __enter__(self) -> EndpointUpdates:
        self.client.meta.events.register_last(
            "before-call.sagemaker.UpdateEndpoint", self._update, unique_id="rdeploy-endpoint-updates"
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.meta.events.unregister("before-call.sagemaker.UpdateEndpoint", unique_id="rdeploy-endpoint-updates")


class ThrottlingProxy:
    """Forwards to ``upstream``; the first ``failures`` requests whose ``X-Amz-Target``
    header contains ``target`` get HTTP 400 ``ThrottlingException`` instead."""

    def __init__(self, upstream: str, *, target: str, failures: int) -> None:
        self.upstream = upstream
        self.target = target
        self.remaining = failures
        self.throttled = 0
        self.forwarded = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with proxy._lock:
                    throttle = proxy.target in (self.headers.get("X-Amz-Target") or "") and proxy.remaining > 0
                    if throttle:
                        proxy.remaining -= 1
                        proxy.throttled += 1
                    else:
                        proxy.forwarded += 1
                if throttle:
                    payload = json.dumps({"__type": "ThrottlingException", "message": "Rate exceeded"}).encode()
                    self.send_response(400)
                    self.send_header("Content-Type", "application/x-amz-json-1.1")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in {"host", "content-length"}}
                request = urllib.request.Request(  # noqa: S310 (local moto)
                    f"{proxy.upstream}{self.path}", data=body, method="POST", headers=headers
                )
                try:
                    response = urllib.request.urlopen(request, timeout=30)  # noqa: S310 (local moto)
                except urllib.error.HTTPError as error:
                    response = error
                with response:
                    data = response.read()
                    self.send_response(response.status)
                    for key, value in response.headers.items():
                        if key.lower() not in {"content-length", "connection", "transfer-encoding"}:
                            self.send_header(key, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> ThrottlingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
