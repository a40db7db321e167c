"""The public API's Lambda handler, called with API Gateway proxy events, against moto.

Needs no Django. moto's invoke_endpoint answers what the test queued (it runs no
container and queues only text): a model's own error (ModelError) and a binary answer
cannot be produced by moto, so those two tests put a botocore Stubber on invoke_endpoint.
moto also answers for an endpoint that does not exist; the stopped-endpoint tests go
through testsupport.sagemaker_runtime, which answers AWS's "not found" over moto's state.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from botocore.response import StreamingBody
from botocore.stub import Stubber

from testsupport.moto import MotoServer
from testsupport.sagemaker_runtime import endpoint_checking_runtime, load_handler

HANDLER = Path(__file__).resolve().parent.parent / "lambda" / "handler.py"


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    server = MotoServer(port=0)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def handler(moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """A freshly loaded handler module, as a new Lambda container would load it."""
    moto.reset()
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto.url)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("SAGEMAKER_ENDPOINT_NAME", "rdeploy-iris")
    monkeypatch.setenv("RDEPLOY_ENDPOINT_NAME", "iris")
    return load_handler(HANDLER)


def proxy_event(body: str, *, headers: dict[str, str] | None = None, base64_encoded: bool = False) -> dict[str, Any]:
    return {
        "resource": "/invocations",
        "path": "/invocations",
        "httpMethod": "POST",
        "headers": headers or {},
        "body": body,
        "isBase64Encoded": base64_encoded,
        "requestContext": {"stage": "v1", "identity": {"apiKey": "k"}},
    }


def test_handler_forwards_the_request_to_the_endpoint_and_returns_its_answer(
    handler: ModuleType, moto: MotoServer
) -> None:
    moto.queue_endpoint_results(
        {"Body": '["setosa"]', "ContentType": "application/json", "CustomAttributes": "trace=1"}
    )
    event = proxy_event(
        json.dumps([{"Sepal.Length": 5.1}]),
        headers={"Content-Type": "application/json", "Accept": "application/json"},
    )

    response = handler.handler(event, None)

    assert response["statusCode"] == 200
    assert json.loads(response["body"]) == ["setosa"]
    assert response["headers"]["Content-Type"] == "application/json"
    assert response["headers"]["X-Amzn-SageMaker-Custom-Attributes"] == "trace=1"
    assert response["isBase64Encoded"] is False


def test_handler_decodes_a_base64_body_and_returns_the_endpoints_content_type(
    handler: ModuleType, moto: MotoServer
) -> None:
    moto.queue_endpoint_results({"Body": "setosa\n", "ContentType": "text/csv"})
    csv = b"Sepal.Length,Sepal.Width\n5.1,3.5\n"
    event = proxy_event(
        base64.b64encode(csv).decode(),
        headers={"content-type": "text/csv", "accept": "text/csv", "X-Amzn-SageMaker-Custom-Attributes": "a=b"},
        base64_encoded=True,
    )

    response = handler.handler(event, None)

    assert (response["statusCode"], response["body"]) == (200, "setosa\n")
    assert response["headers"]["Content-Type"] == "text/csv"


def test_handler_passes_a_model_error_through_with_its_status_and_body(handler: ModuleType) -> None:
    model_says = json.dumps({"error": "column Sepal.Width is missing"})
    with Stubber(handler._client()) as stub:
        stub.add_client_error(
            "invoke_endpoint",
            service_error_code="ModelError",
            service_message="Received client error (400) from primary",
            http_status_code=424,
            response_meta={},
        )
        stub._queue[-1]["response"][1].update({"OriginalStatusCode": 400, "OriginalMessage": model_says})
        response = handler.handler(proxy_event("[{}]"), None)

    assert response["statusCode"] == 400
    assert json.loads(response["body"]) == {"error": "column Sepal.Width is missing"}


def test_handler_returns_binary_answers_base64_encoded(handler: ModuleType) -> None:
    # moto queues results as JSON text, so non-UTF-8 bytes need the Stubber.
    body = StreamingBody(io.BytesIO(b"\xff\xfe\x00"), 3)
    with Stubber(handler._client()) as stub:
        stub.add_response("invoke_endpoint", {"Body": body, "ContentType": "application/octet-stream"})
        response = handler.handler(proxy_event("x"), None)

    assert response["isBase64Encoded"] is True
    assert base64.b64decode(response["body"]) == b"\xff\xfe\x00"


def test_moto_alone_answers_for_an_endpoint_that_does_not_exist(handler: ModuleType) -> None:
    # Why the stopped-endpoint tests need EndpointCheckingRuntime: no endpoint exists here.
    assert handler.handler(proxy_event("[{}]"), None)["statusCode"] == 200


def answer_for_a_stopped_endpoint(handler: ModuleType, moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> Any:
    with endpoint_checking_runtime(moto.url) as runtime:
        monkeypatch.setenv("AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", runtime.url)
        response = handler.handler(proxy_event("[{}]"), None)
    assert runtime.not_found == 1
    return response


def test_handler_answers_a_stopped_endpoint_like_rdeploys_gateway(
    handler: ModuleType, moto: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    response = answer_for_a_stopped_endpoint(handler, moto, monkeypatch)

    assert response["statusCode"] == 503
    assert response["headers"]["Retry-After"] == "60"
    assert response["headers"]["Content-Type"] == "application/json"
    assert json.loads(response["body"]) == {
        "message": "Endpoint iris is stopped; its owner can start it.",
        "reason": "endpoint is stopped",
    }


def test_handler_says_a_stopped_endpoint_with_wake_on_request_is_being_started(
    handler: ModuleType, moto: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RDEPLOY_WAKE_ON_REQUEST", "true")

    response = answer_for_a_stopped_endpoint(handler, moto, monkeypatch)

    assert response["statusCode"] == 503
    # Not 5 s: rdeploy learns of the call from CloudWatch minutes later (docs/sagemaker.md).
    assert response["headers"]["Retry-After"] == "60"
    assert json.loads(response["body"]) == {
        "message": "Endpoint iris is stopped and is being started; this takes several minutes.",
        "reason": "endpoint is stopped",
    }


def test_handler_answers_any_other_validation_error_400_with_its_message(handler: ModuleType) -> None:
    with Stubber(handler._client()) as stub:
        stub.add_client_error(
            "invoke_endpoint",
            service_error_code="ValidationError",
            service_message="1 validation error detected: Value at 'contentType' failed to satisfy constraint",
            http_status_code=400,
        )
        response = handler.handler(proxy_event("[{}]"), None)

    assert response["statusCode"] == 400
    assert "contentType" in json.loads(response["body"])["error"]
    assert "Retry-After" not in response["headers"]


def authorizer_event(key: str | None) -> dict[str, Any]:
    return {
        "type": "REQUEST",
        "methodArn": "arn:aws:execute-api:us-east-1:123456789012:abc123/v1/POST/invocations",
        "headers": {} if key is None else {"X-Api-Key": key},
    }


def test_authorizer_allows_the_endpoints_key_and_names_the_usage_plan_key(
    handler: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RDEPLOY_API_KEY_SHA256", hashlib.sha256(b"rdk_right").hexdigest())
    monkeypatch.setenv("RDEPLOY_USAGE_KEY", "usage-plan-key-value")

    allowed = handler.handler(authorizer_event("rdk_right"), None)
    denied = handler.handler(authorizer_event("rdk_wrong"), None)
    missing = handler.handler(authorizer_event(None), None)

    assert allowed["policyDocument"]["Statement"][0]["Effect"] == "Allow"
    assert allowed["usageIdentifierKey"] == "usage-plan-key-value"
    for answer in (denied, missing):
        assert answer["policyDocument"]["Statement"][0]["Effect"] == "Deny"
        assert "usageIdentifierKey" not in answer
