"""API Gateway (REST): ``POST /invocations`` -> Lambda proxy, guarded by an API key and a
usage plan (API keys and usage plans exist only on REST APIs, not HTTP APIs).

The caller's key is checked by a Lambda REQUEST authorizer (against the SHA-256 rdeploy
keeps), which hands API Gateway the usage-plan key to meter against
(``apiKeySource=AUTHORIZER``): one key per endpoint, rotated without touching AWS keys.

API Gateway makes up its own ids, so everything is found again by its deterministic name.
"""

from __future__ import annotations

from typing import Any

from deployer.integrations.aws.client import (
    aws_client,
    ok_if_exists,
    ok_if_missing,
    raises_aws_error,
)

ROUTE = "invocations"


def _paged(operation: str, **arguments: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for page in aws_client("apigateway").get_paginator(operation).paginate(**arguments):
        items.extend(page.get("items", []))
    return items


@raises_aws_error
def find_rest_api(name: str) -> str | None:
    return next((str(api["id"]) for api in _paged("get_rest_apis") if api["name"] == name), None)


def _named(items: list[dict[str, Any]], prefix: str) -> list[tuple[str, str, dict[str, str]]]:
    return [(item["name"], item["id"], item.get("tags") or {}) for item in items if item["name"].startswith(prefix)]


@raises_aws_error
def rest_apis(prefix: str) -> list[tuple[str, str, dict[str, str]]]:
    """(name, id, tags) of every REST API whose name starts with ``prefix``."""
    return _named(_paged("get_rest_apis"), prefix)


def _tags_of_named(items: list[dict[str, Any]], name: str) -> dict[str, str] | None:
    return next((dict(item.get("tags") or {}) for item in items if item["name"] == name), None)


@raises_aws_error
def rest_api_tags(name: str) -> dict[str, str] | None:
    """The tags of the REST API called ``name``, or None when there is none."""
    return _tags_of_named(_paged("get_rest_apis"), name)


@raises_aws_error
def api_key_tags(name: str) -> dict[str, str] | None:
    return _tags_of_named(_paged("get_api_keys", nameQuery=name), name)


@raises_aws_error
def usage_plan_tags(name: str) -> dict[str, str] | None:
    return _tags_of_named(_paged("get_usage_plans"), name)


@raises_aws_error
def ensure_rest_api(name: str, *, tags: dict[str, str]) -> str:
    existing = find_rest_api(name)
    if existing:
        return existing
    api = aws_client("apigateway").create_rest_api(
        name=name,
        description="rdeploy public prediction API",
        endpointConfiguration={"types": ["REGIONAL"]},
        apiKeySource="AUTHORIZER",
        tags=tags,
    )
    return str(api["id"])


def _lambda_uri(lambda_arn: str, region: str) -> str:
    return f"arn:aws:apigateway:{region}:lambda:path/2015-03-31/functions/{lambda_arn}/invocations"


@raises_aws_error
def ensure_authorizer(api_id: str, *, name: str, lambda_arn: str, region: str) -> str:
    """A REQUEST authorizer reading the ``x-api-key`` header; results cached 60 s (a key
    rotation flushes the cache: ``flush_authorizer_cache``)."""
    client = aws_client("apigateway")
    for authorizer in client.get_authorizers(restApiId=api_id).get("items", []):
        if authorizer["name"] == name:
            return str(authorizer["id"])
    created = client.create_authorizer(
        restApiId=api_id,
        name=name,
        type="REQUEST",
        authorizerUri=_lambda_uri(lambda_arn, region),
        identitySource="method.request.header.x-api-key",
        authorizerResultTtlInSeconds=60,
    )
    return str(created["id"])


@raises_aws_error
def ensure_invocations_route(api_id: str, *, lambda_arn: str, region: str, authorizer_id: str) -> None:
    """``POST /invocations`` (authorizer + usage-plan key) with a Lambda proxy integration."""
    client = aws_client("apigateway")
    resources = _paged("get_resources", restApiId=api_id)
    root = next(resource["id"] for resource in resources if resource["path"] == "/")
    route = next((resource for resource in resources if resource["path"] == f"/{ROUTE}"), None)
    if route is None:
        route = client.create_resource(restApiId=api_id, parentId=root, pathPart=ROUTE)
    resource_id = route["id"]
    if "POST" not in (route.get("resourceMethods") or {}):
        with ok_if_exists():
            client.put_method(
                restApiId=api_id,
                resourceId=resource_id,
                httpMethod="POST",
                authorizationType="CUSTOM",
                authorizerId=authorizer_id,
                apiKeyRequired=True,
            )
    client.put_integration(
        restApiId=api_id,
        resourceId=resource_id,
        httpMethod="POST",
        type="AWS_PROXY",
        integrationHttpMethod="POST",
        uri=_lambda_uri(lambda_arn, region),
        # API Gateway's ceiling for a REST integration (docs/sagemaker.md).
        timeoutInMillis=29_000,
    )


@raises_aws_error
def ensure_stage(api_id: str, stage: str) -> None:
    client = aws_client("apigateway")
    with ok_if_missing():
        client.get_stage(restApiId=api_id, stageName=stage)
        return
    client.create_deployment(restApiId=api_id, stageName=stage, description="rdeploy")


@raises_aws_error
def flush_authorizer_cache(api_id: str, stage: str) -> None:
    """Forget every cached authorizer answer of ``stage``, so the next request with any key
    asks the authorizer again. A missing API or stage has nothing cached."""
    with ok_if_missing():
        aws_client("apigateway").flush_stage_authorizers_cache(restApiId=api_id, stageName=stage)


@raises_aws_error
def find_api_key(name: str) -> str | None:
    return next((str(key["id"]) for key in _paged("get_api_keys", nameQuery=name) if key["name"] == name), None)


@raises_aws_error
def api_keys(prefix: str) -> list[tuple[str, str, dict[str, str]]]:
    return _named(_paged("get_api_keys"), prefix)


@raises_aws_error
def ensure_api_key(name: str, *, value: str, tags: dict[str, str]) -> tuple[str, str]:
    """(id, value) of the usage-plan key, creating it with ``value`` when missing."""
    client = aws_client("apigateway")
    existing = find_api_key(name)
    if existing:
        return existing, str(client.get_api_key(apiKey=existing, includeValue=True)["value"])
    key = client.create_api_key(name=name, enabled=True, value=value, tags=tags)
    return str(key["id"]), value


@raises_aws_error
def find_usage_plan(name: str) -> str | None:
    return next((str(plan["id"]) for plan in _paged("get_usage_plans") if plan["name"] == name), None)


@raises_aws_error
def usage_plans(prefix: str) -> list[tuple[str, str, dict[str, str]]]:
    return _named(_paged("get_usage_plans"), prefix)


@raises_aws_error
def ensure_usage_plan(
    name: str,
    *,
    api_id: str,
    stage: str,
    key_id: str,
    rate_limit: float,
    burst_limit: int,
    quota_per_day: int,
    tags: dict[str, str],
) -> str:
    client = aws_client("apigateway")
    plan_id = find_usage_plan(name)
    if plan_id is None:
        plan_id = str(
            client.create_usage_plan(
                name=name,
                apiStages=[{"apiId": api_id, "stage": stage}],
                throttle={"rateLimit": rate_limit, "burstLimit": burst_limit},
                quota={"limit": quota_per_day, "period": "DAY"},
                tags=tags,
            )["id"]
        )
    with ok_if_exists():
        client.create_usage_plan_key(usagePlanId=plan_id, keyId=key_id, keyType="API_KEY")
    return plan_id


@raises_aws_error
def delete_usage_plan(name: str) -> None:
    """Detach its keys and stages first (AWS refuses otherwise); missing counts as deleted."""
    client = aws_client("apigateway")
    plan_id = find_usage_plan(name)
    if plan_id is None:
        return
    with ok_if_missing():
        for key in _paged("get_usage_plan_keys", usagePlanId=plan_id):
            client.delete_usage_plan_key(usagePlanId=plan_id, keyId=key["id"])
        plan = client.get_usage_plan(usagePlanId=plan_id)
        operations = [
            {"op": "remove", "path": "/apiStages", "value": f"{stage['apiId']}:{stage['stage']}"}
            for stage in plan.get("apiStages", [])
        ]
        if operations:
            client.update_usage_plan(usagePlanId=plan_id, patchOperations=operations)
        client.delete_usage_plan(usagePlanId=plan_id)


@raises_aws_error
def delete_api_key(name: str) -> None:
    key_id = find_api_key(name)
    if key_id is None:
        return
    with ok_if_missing():
        aws_client("apigateway").delete_api_key(apiKey=key_id)


@raises_aws_error
def delete_rest_api(name: str) -> None:
    api_id = find_rest_api(name)
    if api_id is None:
        return
    with ok_if_missing():
        aws_client("apigateway").delete_rest_api(restApiId=api_id)


def invoke_url(api_id: str, *, region: str, stage: str) -> str:
    return f"https://{api_id}.execute-api.{region}.amazonaws.com/{stage}/{ROUTE}"
