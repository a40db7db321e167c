"""The public API's Lambda function: API Gateway (REST, Lambda proxy) -> SageMaker endpoint.

Deployed by rdeploy as the only file of the function's zip; runs on AWS Lambda's Python
runtime, whose bundled boto3 it uses. Content type, accept and SageMaker custom attributes
pass through both ways; a model's own error keeps its status and body.

The same function is the API's REQUEST authorizer: it accepts the endpoint's rdeploy API
key (``x-api-key``) by comparing its SHA-256 with the one rdeploy keeps, and names the
usage-plan key API Gateway meters and throttles against.

Environment: ``SAGEMAKER_ENDPOINT_NAME``, ``RDEPLOY_ENDPOINT_NAME`` (the name callers know),
``RDEPLOY_API_KEY_SHA256``, ``RDEPLOY_USAGE_KEY``, ``RDEPLOY_WAKE_ON_REQUEST`` ("true" when
the endpoint has ``wake_on_request``).

The function cannot start a stopped endpoint (rdeploy is not reachable from AWS in
general): rdeploy's reconciler sees its 503 answers in API Gateway's ``5XXError`` metric
and starts the endpoint (docs/sagemaker.md, "A stopped endpoint's public API").

API Gateway gives an integration at most 29 seconds, so the SageMaker call is bounded
below that: a slow prediction is answered 504 by this function, not dropped by the gateway.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, ConnectTimeoutError, ReadTimeoutError

_CLIENT: Any = None
CUSTOM_ATTRIBUTES = "x-amzn-sagemaker-custom-attributes"
THROTTLED = {"ThrottlingException", "TooManyRequestsException", "Throttling"}
# InvokeEndpoint's answer for an endpoint that does not exist (AWS's wording, as botocore
# reports it: "An error occurred (ValidationError) when calling the InvokeEndpoint
# operation: Endpoint <name> of account <id> not found.").
ENDPOINT_NOT_FOUND = re.compile(r"\AEndpoint \S+ of account \S+ not found\.?\Z")
# The same wait rdeploy's gateway asks of callers of a stopped endpoint (STOPPED_RETRY_AFTER).
STOPPED_RETRY_AFTER = 60


def _client() -> Any:
    # Created once per Lambda container and reused across invocations.
    global _CLIENT
    if _CLIENT is None:
        config = Config(connect_timeout=2, read_timeout=26, retries={"mode": "standard", "total_max_attempts": 1})
        _CLIENT = boto3.client("sagemaker-runtime", config=config)
    return _CLIENT


def _response(status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None) -> dict[str, Any]:
    headers = {"Content-Type": content_type, **(extra or {})}
    try:
        return {"statusCode": status, "headers": headers, "body": body.decode("utf-8"), "isBase64Encoded": False}
    except UnicodeDecodeError:
        return {
            "statusCode": status,
            "headers": headers,
            "body": base64.b64encode(body).decode("ascii"),
            "isBase64Encoded": True,
        }


def _error(status: int, message: str) -> dict[str, Any]:
    return _response(status, json.dumps({"error": message}).encode(), "application/json")


def _stopped() -> dict[str, Any]:
    name = os.environ.get("RDEPLOY_ENDPOINT_NAME") or os.environ["SAGEMAKER_ENDPOINT_NAME"]
    if os.environ.get("RDEPLOY_WAKE_ON_REQUEST") == "true":
        # Still 60 s, not the 5 s of rdeploy's own route: rdeploy learns of this call from
        # CloudWatch minutes later, and the endpoint takes minutes more to come up; every
        # retry meanwhile is billed and counts against the key's daily quota.
        message = f"Endpoint {name} is stopped and is being started; this takes several minutes."
    else:
        message = f"Endpoint {name} is stopped; its owner can start it."
    body = {"message": message, "reason": "endpoint is stopped"}
    return _response(503, json.dumps(body).encode(), "application/json", {"Retry-After": str(STOPPED_RETRY_AFTER)})


def authorize(event: dict[str, Any]) -> dict[str, Any]:
    headers = {str(k).lower(): str(v) for k, v in (event.get("headers") or {}).items()}
    presented = hashlib.sha256(headers.get("x-api-key", "").encode()).hexdigest()
    expected = os.environ.get("RDEPLOY_API_KEY_SHA256", "")
    allowed = bool(expected) and hmac.compare_digest(presented, expected)
    statement = {
        "Action": "execute-api:Invoke",
        "Effect": "Allow" if allowed else "Deny",
        "Resource": event["methodArn"],
    }
    answer: dict[str, Any] = {
        "principalId": "rdeploy-api-key",
        "policyDocument": {"Version": "2012-10-17", "Statement": [statement]},
    }
    if allowed:
        answer["usageIdentifierKey"] = os.environ["RDEPLOY_USAGE_KEY"]
    return answer


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    if event.get("type") == "REQUEST" and "methodArn" in event:
        return authorize(event)
    headers = {str(k).lower(): str(v) for k, v in (event.get("headers") or {}).items()}
    raw = event.get("body") or ""
    body = base64.b64decode(raw) if event.get("isBase64Encoded") else raw.encode("utf-8")
    arguments: dict[str, Any] = {
        "EndpointName": os.environ["SAGEMAKER_ENDPOINT_NAME"],
        "Body": body,
        "ContentType": headers.get("content-type", "application/json"),
        "Accept": headers.get("accept", "application/json"),
    }
    if headers.get(CUSTOM_ATTRIBUTES):
        arguments["CustomAttributes"] = headers[CUSTOM_ATTRIBUTES]
    try:
        result = _client().invoke_endpoint(**arguments)
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        message = error.response.get("Error", {}).get("Message", "")
        if code == "ModelError":
            # The container answered with an error of its own: pass it through unchanged.
            original = error.response.get("OriginalMessage", message)
            return _response(int(error.response.get("OriginalStatusCode", 500)), original.encode(), "application/json")
        if code in THROTTLED:
            return _error(429, "the endpoint is busy; retry with backoff")
        if code == "ValidationError":
            # SageMaker Runtime's only code for a bad request; a missing endpoint is one.
            return _stopped() if ENDPOINT_NOT_FOUND.match(message) else _error(400, message)
        return _error(502, f"the model endpoint failed: {code}")
    except (ConnectTimeoutError, ReadTimeoutError):
        return _error(504, "the model endpoint did not answer in time")
    except BotoCoreError as error:
        return _error(502, f"the model endpoint could not be reached: {type(error).__name__}")
    extra = {"X-Amzn-SageMaker-Custom-Attributes": result["CustomAttributes"]} if result.get("CustomAttributes") else {}
    return _response(200, result["Body"].read(), result.get("ContentType", "application/octet-stream"), extra)
