"""SageMaker Runtime's InvokeEndpoint as AWS answers it, over moto's state.

moto's InvokeEndpoint answers for any name, existing endpoint or not, so a stopped
(deleted) endpoint cannot be seen through it. This small HTTP server speaks the
InvokeEndpoint wire protocol (rest-json): for an endpoint moto has InService it answers
moto's own result; for any other it answers HTTP 400 with AWS's ``ValidationError``
"Endpoint <name> of account <id> not found." Point a client at it with
``AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME``. Also the loader of the public API's Lambda
handler, as a new Lambda container loads it.
"""

from __future__ import annotations

import importlib.util
import json
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
from botocore.exceptions import ClientError

from testsupport.moto import ACCOUNT_ID

INVOCATIONS_PREFIX = "/endpoints/"
RESULT_HEADERS = {
    "ContentType": "Content-Type",
    "InvokedProductionVariant": "X-Amzn-Invoked-Production-Variant",
    "CustomAttributes": "X-Amzn-SageMaker-Custom-Attributes",
}


def load_handler(path: Path) -> ModuleType:
    """A fresh module from the handler file: module-level state (its cached client) starts empty."""
    spec = importlib.util.spec_from_file_location("rdeploy_lambda_handler", path)
    assert spec
    assert spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class EndpointCheckingRuntime:
    """Where the server listens and what it answered."""

    url: str
    not_found: int = 0
    answered: int = 0


@contextmanager
def endpoint_checking_runtime(upstream: str, *, region: str = "us-east-1") -> Iterator[EndpointCheckingRuntime]:
    """Answers InvokeEndpoint from moto at ``upstream``, refusing endpoints that are not InService."""
    sagemaker = boto3.client("sagemaker", endpoint_url=upstream, region_name=region)
    runtime = boto3.client("sagemaker-runtime", endpoint_url=upstream, region_name=region)
    lock = threading.Lock()
    state = EndpointCheckingRuntime(url="")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            name = urllib.parse.unquote(self.path.removeprefix(INVOCATIONS_PREFIX).split("/", 1)[0])
            try:
                in_service = sagemaker.describe_endpoint(EndpointName=name)["EndpointStatus"] == "InService"
            except ClientError:
                in_service = False
            if not in_service:
                with lock:
                    state.not_found += 1
                error = {"message": f"Endpoint {name} of account {ACCOUNT_ID} not found."}
                self._answer(400, json.dumps(error).encode(), {"x-amzn-ErrorType": "ValidationError"})
                return
            result = runtime.invoke_endpoint(
                EndpointName=name, Body=body, ContentType=self.headers.get("Content-Type", "application/json")
            )
            with lock:
                state.answered += 1
            headers = {header: result[field] for field, header in RESULT_HEADERS.items() if result.get(field)}
            self._answer(200, result["Body"].read(), headers)

        def _answer(self, status: int, data: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            headers.setdefault("Content-Type", "application/json")
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
