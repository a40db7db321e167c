"""The one place boto3 clients are made: region, endpoint URL and retry policy from settings."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any, ParamSpec, TypeVar, cast

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from django.conf import settings

# Error codes AWS uses for "slow down"; botocore's adaptive mode already retries them,
# these are what is left when its attempts run out.
THROTTLING_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "TransactionInProgressException",
        "RequestLimitExceeded",
        "SlowDown",
        "RequestThrottled",
        "LimitExceededException",
        "PriorRequestNotComplete",
        "EC2ThrottledException",
    }
)


class AwsConfigurationError(Exception):
    """A setting the SageMaker target needs is missing or wrong; the message names it."""


class AwsError(Exception):
    """An AWS call failed. The integration modules raise this (never botocore's
    exceptions), so callers decide on retrying without knowing botocore.

    ``code`` is AWS's error code ("" when AWS never answered), ``transient`` whether a
    later retry may succeed (throttling, 5xx, connection trouble), ``message`` what AWS said.
    """

    def __init__(self, code: str, message: str, *, transient: bool) -> None:
        super().__init__(f"{code}: {message}" if code else message)
        self.code = code
        self.message = message
        self.transient = transient


class AwsUnreachable(AwsError):
    """AWS did not answer at all (connection refused or lost, read timeout)."""


def aws_error(error: ClientError | BotoCoreError) -> AwsError:
    """rdeploy's error for one of botocore's."""
    if isinstance(error, BotoCoreError):
        return AwsUnreachable("", str(error), transient=True)
    return AwsError(error_code(error), error_message(error), transient=is_transient(error))


P = ParamSpec("P")
R = TypeVar("R")


def raises_aws_error(function: Callable[P, R]) -> Callable[P, R]:
    """For an integration function: botocore's exceptions leave it as ``AwsError``
    (a generator's too, raised while it is iterated)."""
    if inspect.isgeneratorfunction(function):

        @functools.wraps(function)
        def generator(*args: P.args, **kwargs: P.kwargs) -> Iterator[Any]:
            try:
                yield from cast(Iterator[Any], function(*args, **kwargs))
            except (ClientError, BotoCoreError) as error:
                raise aws_error(error) from error

        return cast(Callable[P, R], generator)

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return function(*args, **kwargs)
        except (ClientError, BotoCoreError) as error:
            raise aws_error(error) from error

    return wrapper


def aws_client(service: str) -> Any:
    """A boto3 client for ``service`` honouring AWS_REGION / AWS_ENDPOINT_URL / retry settings.

    Clients are thread-safe and expensive to build (they load the service model), so one
    per (service, region, endpoint) is kept for the life of the process.
    """
    region = settings.AWS_REGION
    if not region:
        raise AwsConfigurationError("AWS_DEFAULT_REGION (or AWS_REGION) is not set.")
    return _client(service, region, settings.AWS_ENDPOINT_URL, settings.AWS_MAX_ATTEMPTS)


@cache
def _client(service: str, region: str, endpoint_url: str | None, max_attempts: int) -> Any:
    config = Config(
        region_name=region,
        retries={"mode": "adaptive", "total_max_attempts": max_attempts},
        connect_timeout=10,
        read_timeout=70,
        user_agent_extra="rdeploy",
    )
    return boto3.session.Session().client(service, endpoint_url=endpoint_url, config=config)


def error_code(error: BaseException) -> str:
    if isinstance(error, ClientError):
        return str(error.response.get("Error", {}).get("Code", ""))
    return ""


def error_message(error: BaseException) -> str:
    if isinstance(error, ClientError):
        return str(error.response.get("Error", {}).get("Message", "")) or str(error)
    return str(error)


def is_transient(error: BaseException) -> bool:
    """Throttling, 5xx and connection trouble: worth retrying later, unlike a bad request."""
    if isinstance(error, BotoCoreError):
        # Connection errors, read timeouts, endpoint resolution hiccups.
        return True
    if isinstance(error, ClientError):
        status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        return error_code(error) in THROTTLING_CODES or status >= 500 or status == 429
    return False


def is_not_found(error: BaseException) -> bool:
    """The thing asked about does not exist (each service says so differently)."""
    if not isinstance(error, ClientError):
        return False
    code = error_code(error)
    if code.endswith("NotFoundException") or code in {"NoSuchEntity", "NoSuchKey", "NotFound", "404"}:
        return True
    if code in {"ResourceNotFound", "ImageNotFoundException", "RepositoryNotFoundException"}:
        return True
    # SageMaker answers "ValidationException: Could not find model ..." for a missing resource.
    message = error_message(error)
    return code == "ValidationException" and ("Could not find" in message or "does not exist" in message)


T = TypeVar("T")


def unless_missing(fetch: Callable[[], T], default: T) -> T:
    """``fetch()``, or ``default`` when what it asks about does not exist."""
    try:
        return fetch()
    except ClientError as error:
        if is_not_found(error):
            return default
        raise


@contextmanager
def ok_if_missing() -> Iterator[None]:
    """The block's resource may already be gone (deleted, never made): that counts as done."""
    try:
        yield
    except ClientError as error:
        if not is_not_found(error):
            raise


@contextmanager
def ok_if_exists() -> Iterator[None]:
    """The block's resource may already exist (a retried step made it): that counts as done."""
    try:
        yield
    except ClientError as error:
        if not is_already_exists(error):
            raise


def is_already_exists(error: BaseException) -> bool:
    if not isinstance(error, ClientError):
        return False
    code = error_code(error)
    if code in {"ResourceConflictException", "EntityAlreadyExists", "ResourceAlreadyExistsException"}:
        return True
    if code in {"RepositoryAlreadyExistsException", "ResourceInUse", "ConflictException"}:
        return True
    message = error_message(error)
    return code == "ValidationException" and ("already existing" in message or "already exists" in message)


def tag_list(tags: dict[str, str], *, key: str = "Key", value: str = "Value") -> list[dict[str, str]]:
    """``{"a": "b"}`` -> ``[{"Key": "a", "Value": "b"}]`` (key names vary by service)."""
    return [{key: k, value: v} for k, v in sorted(tags.items())]
