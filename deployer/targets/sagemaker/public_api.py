"""Steps ``public_function`` and ``public_api`` (public endpoints only): a Lambda function
in front of the SageMaker endpoint behind an API Gateway REST API whose authorizer checks
the endpoint's rdeploy API key; handing that API a rotated key; and counting the calls it
answered while the endpoint was stopped (``wake_on_request``)."""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.utils import timezone

from deployer.integrations.aws import apigateway, cloudwatch, iam, lambda_
from deployer.integrations.aws.client import AwsError
from deployer.models import Endpoint, ExternalResource
from deployer.targets.base import StepContext, StepOutcome, TransientStepError
from deployer.targets.sagemaker.cloud_logs import ensure_log_group
from deployer.targets.sagemaker.names import (
    STAGE,
    api_name,
    aws_region,
    endpoint_name,
    function_log_group,
    function_name,
    prefix,
    role_name,
    step_tags,
)
from deployer.targets.sagemaker.options import DEFAULTS
from deployer.targets.sagemaker.ownership import ensure_ours

HANDLER_FILE = Path(settings.BASE_DIR) / "container_templates" / "lambda" / "handler.py"
# API Gateway gives a REST integration at most 29 s; the function gets the same.
LAMBDA_TIMEOUT = 29
# How far back calls to a stopped endpoint's API are counted: CloudWatch keeps 1-minute
# datapoints 15 days and rounds an older start to 5 minutes, which could reach before the stop.
WAKE_LOOKBACK = timedelta(days=14)


def public_function(ctx: StepContext) -> StepOutcome:
    region = aws_region()
    endpoint = ctx.endpoint
    name = endpoint_name(endpoint)
    role_arn = settings.RDEPLOY_LAMBDA_ROLE_ARN
    if not role_arn:
        role = role_name(endpoint)
        ensure_ours(ExternalResource.Kind.IAM_ROLE, role)
        ctx.record_resource(ExternalResource.Kind.IAM_ROLE, role)
        role_arn = iam.ensure_role(
            role,
            path=f"/{prefix()}/",
            trust=iam.LAMBDA_TRUST,
            policy=_function_policy(name, function_log_group(endpoint), region),
            tags=step_tags(ctx),
            boundary=settings.RDEPLOY_LAMBDA_PERMISSIONS_BOUNDARY,
        )
    key_name = api_name(endpoint)
    function = function_name(endpoint)
    # Adopting another's key would hand its value to this installation's function.
    ensure_ours(ExternalResource.Kind.APIGATEWAY_API_KEY, key_name)
    ensure_ours(ExternalResource.Kind.LAMBDA_FUNCTION, function)
    ctx.record_resource(ExternalResource.Kind.APIGATEWAY_API_KEY, key_name)
    _key_id, usage_key = apigateway.ensure_api_key(key_name, value=secrets.token_urlsafe(30), tags=step_tags(ctx))
    ensure_log_group(ctx, function_log_group(endpoint))
    ctx.record_resource(ExternalResource.Kind.LAMBDA_FUNCTION, function)
    environment = {
        "SAGEMAKER_ENDPOINT_NAME": name,
        # The name callers know, for the function's answer while the endpoint is stopped.
        "RDEPLOY_ENDPOINT_NAME": endpoint.name,
        "RDEPLOY_API_KEY_SHA256": endpoint.api_key_hash,
        "RDEPLOY_USAGE_KEY": usage_key,
        # Options never change after creation, so this is set once, here.
        "RDEPLOY_WAKE_ON_REQUEST": "true" if ctx.options.get("wake_on_request") else "false",
    }
    try:
        arn = lambda_.create_function(
            function,
            role_arn=str(role_arn),
            code=lambda_.package(HANDLER_FILE),
            environment=environment,
            tags=step_tags(ctx),
            timeout=LAMBDA_TIMEOUT,
        )
    except AwsError as error:
        # A role created seconds ago is not yet assumable everywhere (IAM is eventually consistent).
        if error.code == "InvalidParameterValueException" and "assume" in error.message:
            raise TransientStepError("Waiting for the new IAM role to propagate.", retry_after=10) from error
        raise
    ctx.record_resource(ExternalResource.Kind.LAMBDA_FUNCTION, function, {"arn": arn})
    return StepOutcome.done(f"Lambda function {function} forwards to {name}.")


def _function_policy(endpoint: str, log_group: str, region: str) -> dict[str, Any]:
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": "sagemaker:InvokeEndpoint",
                "Resource": f"arn:aws:sagemaker:{region}:*:endpoint/{endpoint}",
            },
            {
                # The group exists (rdeploy made it): no CreateLogGroup, so a line after
                # teardown cannot recreate it.
                "Effect": "Allow",
                "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
                "Resource": f"arn:aws:logs:{region}:*:log-group:{log_group}:*",
            },
        ],
    }


def public_api(ctx: StepContext) -> StepOutcome:
    region = aws_region()
    endpoint = ctx.endpoint
    name = api_name(endpoint)
    function = function_name(endpoint)
    function_arn = ctx.resource(ExternalResource.Kind.LAMBDA_FUNCTION).details["arn"]
    account = function_arn.split(":")[4]
    # The stage, authorizer, route and usage plan below change the API found by this name.
    ensure_ours(ExternalResource.Kind.APIGATEWAY_REST_API, name)
    ensure_ours(ExternalResource.Kind.APIGATEWAY_USAGE_PLAN, name)
    ctx.record_resource(ExternalResource.Kind.APIGATEWAY_REST_API, name)
    api_id = apigateway.ensure_rest_api(name, tags=step_tags(ctx))
    authorizer_id = apigateway.ensure_authorizer(api_id, name="api-key", lambda_arn=function_arn, region=region)
    apigateway.ensure_invocations_route(api_id, lambda_arn=function_arn, region=region, authorizer_id=authorizer_id)
    source = f"arn:aws:execute-api:{region}:{account}:{api_id}"
    lambda_.allow_api_gateway(function, statement_id=f"invoke-{api_id}", source_arn=f"{source}/*/POST/invocations")
    lambda_.allow_api_gateway(
        function, statement_id=f"authorize-{api_id}", source_arn=f"{source}/authorizers/{authorizer_id}"
    )
    apigateway.ensure_stage(api_id, STAGE)
    throttle = ctx.options.get("throttle") or {"rate": 10, "burst": 20}
    key_id = apigateway.find_api_key(ctx.resource_id(ExternalResource.Kind.APIGATEWAY_API_KEY))
    if key_id is None:
        raise TransientStepError("The usage-plan key is not visible yet.", retry_after=5)
    ctx.record_resource(ExternalResource.Kind.APIGATEWAY_USAGE_PLAN, name)
    apigateway.ensure_usage_plan(
        name,
        api_id=api_id,
        stage=STAGE,
        key_id=key_id,
        rate_limit=float(throttle["rate"]),
        burst_limit=int(throttle["burst"]),
        quota_per_day=int(ctx.options.get("quota_per_day", DEFAULTS["quota_per_day"])),
        tags=step_tags(ctx),
    )
    url = apigateway.invoke_url(api_id, region=region, stage=STAGE)
    ctx.record_resource(ExternalResource.Kind.APIGATEWAY_REST_API, name, {"id": api_id, "url": url})
    ctx.set_public_url(url)
    return StepOutcome.done(f"Public API at {url} (send the endpoint's API key as x-api-key).")


def sync_public_key(endpoint: Endpoint) -> bool:
    """Give the authorizer the endpoint's key hash, then flush API Gateway's cache of
    its answers, so a rotated key stops working at once (not after the 60 s TTL).

    The flush waits until Lambda serves the new environment (an update takes a few
    seconds); a flush before that could cache the old key's "Allow" again. Done once
    per key: the hash it was done for is kept on the API's record. Returns whether the
    key is in force.
    """
    function = function_name(endpoint)
    key_hash = endpoint.api_key_hash
    environment = lambda_.environment_of(function)
    if environment is None:
        return True
    if environment.get("RDEPLOY_API_KEY_SHA256") != key_hash:
        ensure_ours(ExternalResource.Kind.LAMBDA_FUNCTION, function)
        lambda_.set_environment(function, {**environment, "RDEPLOY_API_KEY_SHA256": key_hash})
    api = (
        ExternalResource.objects.live()
        .named(Endpoint.Target.SAGEMAKER, ExternalResource.Kind.APIGATEWAY_REST_API, api_name(endpoint))
        .first()
    )
    if api is None or not api.details.get("id") or api.details.get("authorizer_flushed_for") == key_hash:
        return True
    if not lambda_.update_finished(function):
        return False
    apigateway.flush_authorizer_cache(str(api.details["id"]), STAGE)
    api.merge_details(authorizer_flushed_for=key_hash)
    return True


def public_calls_since(endpoint: Endpoint, since: datetime) -> int | None:
    """Calls the endpoint's API Gateway API answered with a server error since ``since``
    (None without a public API). While the endpoint is stopped that is every call that
    passed the key check and the throttle: the Lambda answers them 503. API Gateway's
    ``5XXError``, not the function's ``Invocations``: the function is the API's authorizer
    too, so its invocations count calls with a wrong key, which must not start the endpoint."""
    api = ExternalResource.objects.live().of_endpoint(endpoint, ExternalResource.Kind.APIGATEWAY_REST_API).first()
    if api is None:
        return None
    now = timezone.now()
    # A datapoint covers its whole minute, so the minute ``since`` falls in may hold calls
    # answered before it (a model's own 500 before the stop): count from the next one.
    minute = since.replace(second=0, microsecond=0)
    start = max(minute if minute == since else minute + timedelta(minutes=1), now - WAKE_LOOKBACK)
    if start >= now:
        return 0
    return cloudwatch.api_server_errors(api=api.identifier, stage=STAGE, start=start, end=now)
