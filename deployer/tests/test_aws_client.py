"""The AWS client factory: moto through AWS_ENDPOINT_URL, throttling retried with backoff."""

from __future__ import annotations

import socket
import time
from types import SimpleNamespace

import botocore.endpoint
import pytest
from pytest_django.fixtures import Settings as SettingsWrapper

from deployer.integrations.aws import sagemaker
from deployer.integrations.aws.client import AwsError, AwsUnreachable, aws_client
from testsupport.moto import MotoServer, ThrottlingProxy


def test_clients_reach_the_server_named_by_aws_endpoint_url(aws: MotoServer) -> None:
    assert aws_client("s3").meta.endpoint_url == aws.url
    assert aws_client("sagemaker").meta.config.retries["mode"] == "adaptive"


def test_throttled_calls_are_retried_with_backoff_until_they_succeed(
    aws: MotoServer, settings: SettingsWrapper, monkeypatch: pytest.MonkeyPatch
) -> None:
    pauses: list[float] = []

    def pause(seconds: float) -> None:
        pauses.append(seconds)
        time.sleep(seconds)

    # botocore sleeps between attempts here; the pauses are counted, not timed.
    monkeypatch.setattr(botocore.endpoint, "time", SimpleNamespace(sleep=pause))
    with ThrottlingProxy(aws.url, target="SageMaker.ListModels", failures=3) as proxy:
        settings.AWS_ENDPOINT_URL = proxy.url

        assert list(sagemaker.models("rdeploy-")) == []

    assert proxy.throttled == 3
    assert proxy.forwarded == 1
    # A pause before each retry: not an immediate hammering of the API.
    assert len(pauses) == 3
    assert all(seconds > 0 for seconds in pauses)


def test_throttling_that_outlasts_the_retries_is_reported_as_transient(
    aws: MotoServer, settings: SettingsWrapper
) -> None:
    settings.AWS_MAX_ATTEMPTS = 2
    with ThrottlingProxy(aws.url, target="SageMaker.ListModels", failures=10) as proxy:
        settings.AWS_ENDPOINT_URL = proxy.url
        with pytest.raises(AwsError) as raised:
            list(sagemaker.models("rdeploy-"))
    assert proxy.throttled == 2
    assert raised.value.transient
    assert raised.value.code == "ThrottlingException"


def test_missing_things_read_as_absent_and_deleting_them_again_is_a_no_op(aws: MotoServer) -> None:
    assert sagemaker.describe_endpoint("rdeploy-nothing") is None
    assert not sagemaker.model_exists("rdeploy-nothing")
    sagemaker.delete_endpoint("rdeploy-nothing")
    sagemaker.delete_endpoint_config("rdeploy-nothing")
    sagemaker.delete_model("rdeploy-nothing")


def test_an_aws_that_does_not_answer_is_reported_as_unreachable_and_transient(
    aws: MotoServer, settings: SettingsWrapper
) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    settings.AWS_ENDPOINT_URL = f"http://127.0.0.1:{port}"
    settings.AWS_MAX_ATTEMPTS = 1
    with pytest.raises(AwsUnreachable) as raised:
        sagemaker.describe_endpoint("rdeploy-nothing")
    assert raised.value.transient
    assert raised.value.code == ""
