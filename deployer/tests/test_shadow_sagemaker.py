"""Shadows on the SageMaker target against moto (server mode): shadow variants, data
capture, promote, end, a worker killed at every AWS call, and delete (docs/shadow.md).

What moto does not do, and what stands in for it:
- ``UpdateEndpoint`` is missing: ``EndpointUpdates`` plays SageMaker finishing each update.
- ``ShadowProductionVariants`` is accepted and dropped (moto's endpoint configs keep only
  production variants): the test reads what rdeploy sent (``SentRequests``); the
  ``DataCaptureConfig`` moto keeps is read back from moto.
- Nothing writes capture files: the tests write what SageMaker's data capture would, in
  its documented JSON Lines format and place, into moto's S3 (``write_capture``).
"""

from __future__ import annotations

import base64
import json
from fnmatch import fnmatchcase
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.test import override_settings

from deployer.integrations.aws.client import aws_client
from deployer.models import Deployment, DeploymentStep, Endpoint, ExternalResource, ModelVersion, Shadow, ShadowPair
from deployer.services.cloud_gc import cloud_orphans, cloud_orphans_delete
from deployer.services.shadows import shadow_end, shadow_promote, shadow_start, shadows_collect_pairs
from deployer.targets.sagemaker import shadow_capture
from deployer.targets.sagemaker.names import capture_key_prefix, endpoint_name, rollout_name
from deployer.targets.sagemaker.shadow_capture import CapturedAnswer, shadow_config_record
from deployer.tests.sagemaker_support import (
    ONE_PUBLIC_ENDPOINT,
    SentRequests,
    builds_started,
    counts,
    create_public,
    drive,
    latest,
    push_image,
    stub_model,
    tagged,
)
from deployer.tests.test_iam_policies import PLACEHOLDERS, policy_patterns
from deployer.tests.test_sagemaker_faults import run_with_a_kill_at_every_call
from testsupport.moto import EndpointUpdates, MotoServer, SingleCallStubber

pytestmark = pytest.mark.django_db
HOUR = "2026/12/03/21"


def live_endpoint(owner: User, api_client_for: Any) -> Endpoint:
    create_public(owner, api_client_for)
    creation = drive(latest("iris-sm"))
    assert creation.status == Deployment.Status.SUCCEEDED, creation.error
    # What CodeBuild would have pushed: the shadow's build finds the image by its hash.
    push_image(creation.resources[ExternalResource.Kind.ECR_IMAGE])
    return Endpoint.objects.get(name="iris-sm")


def begin_shadow(owner: User, endpoint: Endpoint, *, sample_percent: int = 25) -> Shadow:
    """A shadow of a new model version (moto holds the live version's image: none is built)."""
    model = stub_model(owner, content=b"model-2")
    return shadow_start(endpoint=endpoint, model_version=model, sample_percent=sample_percent, duration="2h")


def run(deployment: Deployment, *, kill_at_every_call: bool = False) -> tuple[Deployment, list[str]]:
    """The deployment run to success (first killed at every AWS call of every step, when
    asked), and the configs the endpoint was updated to meanwhile."""
    with EndpointUpdates(aws_client("sagemaker")) as updates:
        if kill_at_every_call:
            assert run_with_a_kill_at_every_call(deployment) >= 5
        deployment = drive(deployment)
    assert deployment.status == Deployment.Status.SUCCEEDED, deployment.error
    return deployment, [call["EndpointConfigName"] for call in updates.calls]


def start_shadow(owner: User, endpoint: Endpoint, *, sample_percent: int = 25) -> Shadow:
    shadow = begin_shadow(owner, endpoint, sample_percent=sample_percent)
    run(shadow.deployment)
    shadow.refresh_from_db()
    return shadow


def assert_finished(shadow: Shadow, status: str, *, serving: ModelVersion) -> None:
    """The shadow's row, and the endpoint serving ``serving`` with no copies going anywhere."""
    shadow.refresh_from_db()
    endpoint = Endpoint.objects.get(pk=shadow.endpoint_id)
    assert shadow.status == status
    assert endpoint.status == Endpoint.Status.LIVE
    assert endpoint.model_version_id == serving.pk
    assert endpoint.shadow_runtime == {}
    assert counts() == ONE_PUBLIC_ENDPOINT


def capture_event(event_id: str, answer: bytes, *, encoding: str = "JSON") -> dict[str, Any]:
    """One line of SageMaker's data capture (AWS developer guide, "Capture data from
    real-time endpoint": captureData.endpointInput/endpointOutput, eventMetadata, eventVersion)."""
    data = base64.b64encode(answer).decode() if encoding == "BASE64" else answer.decode()
    return {
        "captureData": {
            "endpointInput": {
                "observedContentType": "application/json",
                "mode": "INPUT",
                "data": '[{"Sepal.Length": 5.1}]',
                "encoding": "JSON",
            },
            "endpointOutput": {
                "observedContentType": "application/json",
                "mode": "OUTPUT",
                "data": data,
                "encoding": encoding,
            },
        },
        "eventMetadata": {"eventId": event_id, "inferenceTime": "2026-12-03T21:10:05Z"},
        "eventVersion": "0",
    }


def write_capture(shadow: Shadow, variant: str, name: str, lines: list[dict[str, Any] | str]) -> str:
    """What data capture writes: <uri>/<endpoint>/<variant>/yyyy/mm/dd/hh/<file>.jsonl.
    moto writes no capture files; this puts them where SageMaker would."""
    folder = f"{capture_key_prefix(rollout_name(shadow.deployment))}/{endpoint_name(shadow.endpoint)}/{variant}"
    key = f"{folder}/{HOUR}/{name}"
    body = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n"
    aws_client("s3").put_object(Bucket=settings.RDEPLOY_S3_BUCKET, Key=key, Body=body.encode())
    return key


def capture_keys() -> list[str]:
    listed = aws_client("s3").list_objects_v2(Bucket=settings.RDEPLOY_S3_BUCKET).get("Contents", [])
    return [item["Key"] for item in listed if "/shadow-capture/" in item["Key"]]


def pairs(shadow: Shadow) -> list[tuple[Any, ...]]:
    return list(
        ShadowPair.objects.filter(shadow=shadow)
        .order_by("id")
        .values_list("live_status", "shadow_status", "live_output", "shadow_output", "shadow_error", "live_ms")
    )


def names_of(listing: str, key: str, name_key: str) -> set[str]:
    return {item[name_key] for item in getattr(aws_client("sagemaker"), listing)()[key]}


def models() -> set[str]:
    return names_of("list_models", "Models", "ModelName")


def configs() -> set[str]:
    return names_of("list_endpoint_configs", "EndpointConfigs", "EndpointConfigName")


def assert_cloud(*, serving: str, models_left: set[str], configs_left: set[str]) -> None:
    """The endpoint's config, and which SageMaker models and configs exist."""
    assert serving_config() == serving
    assert models() == models_left
    assert configs() == configs_left


def serving_config() -> str:
    return str(aws_client("sagemaker").describe_endpoint(EndpointName=endpoint_name_of())["EndpointConfigName"])


def endpoint_name_of() -> str:
    return endpoint_name(Endpoint.objects.get(name="iris-sm"))


def test_a_shadow_runs_as_a_shadow_variant_with_data_capture_and_builds_nothing(
    aws: MotoServer, owner: User, api_client_for: Any
) -> None:
    endpoint = live_endpoint(owner, api_client_for)
    creation = latest("iris-sm")
    shadow = begin_shadow(owner, endpoint, sample_percent=25)
    with EndpointUpdates(aws_client("sagemaker")) as updates, SentRequests("sagemaker", "CreateEndpointConfig") as sent:
        deployment = drive(shadow.deployment)

    assert deployment.status == Deployment.Status.SUCCEEDED, deployment.error
    assert builds_started() == 1
    assert deployment.steps.get(name="build_image").status == DeploymentStep.Status.SKIPPED
    config = rollout_name(deployment)
    assert [call["EndpointConfigName"] for call in updates.calls] == [config]
    assert serving_config() == config
    (request,) = sent.calls
    assert [(v["VariantName"], v["ModelName"]) for v in request["ProductionVariants"]] == [
        ("main", rollout_name(creation))
    ]
    (copy,) = request["ShadowProductionVariants"]
    assert (copy["VariantName"], copy["ModelName"], copy["InitialVariantWeight"]) == ("shadow", config, 0.25)
    assert copy["InstanceType"] == request["ProductionVariants"][0]["InstanceType"]
    capture = aws_client("sagemaker").describe_endpoint_config(EndpointConfigName=config)["DataCaptureConfig"]
    assert capture["EnableCapture"] is True
    assert capture["InitialSamplingPercentage"] == 100
    assert capture["DestinationS3Uri"] == f"s3://{settings.RDEPLOY_S3_BUCKET}/{capture_key_prefix(config)}"
    assert capture["CaptureOptions"] == [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}]
    config_tags = {
        tag.identifier: tag.tags for tag in tagged() if tag.kind == ExternalResource.Kind.SAGEMAKER_ENDPOINT_CONFIG
    }
    assert config_tags[config]["rdeploy:deployment"] == str(deployment.pk)
    assert models() == {rollout_name(creation), config}
    shadow.refresh_from_db()
    endpoint.refresh_from_db()
    assert shadow.status == Shadow.Status.RUNNING
    # SageMaker copies the requests: the gateway is given nothing to send.
    assert "runtime" not in endpoint.shadow_runtime
    assert endpoint.shadow_runtime["copies"] == "sagemaker"
    assert endpoint.shadow_runtime["capture_prefix"] == capture["DestinationS3Uri"]
    assert endpoint.runtime["deployment"] == creation.pk


def test_pairs_are_what_the_capture_files_say_collected_once_each(
    aws: MotoServer, owner: User, api_client_for: Any
) -> None:
    shadow = start_shadow(owner, live_endpoint(owner, api_client_for), sample_percent=100)
    write_capture(
        shadow,
        "main",
        "21-10-05-123-a.jsonl",
        [
            capture_event("e1", b'{"predictions": ["setosa"]}'),
            capture_event("e2", b'{"predictions": [1.5, 2.5]}'),
            capture_event("e3", b'{"predictions": ["virginica"]}'),
            capture_event("e6", b'{"predictions": ["setosa"]}'),
            capture_event("e7", b'{"predictions": ["setosa"]}'),
        ],
    )
    # Model output is untrusted: an answer nested deeper than rdeploy reads keeps nothing.
    too_deep = b'{"predictions": ' + b"[" * 100 + b"1" + b"]" * 100 + b"}"
    # ... and a line longer than rdeploy reads is skipped (e7 stays unpaired).
    too_long = json.dumps({"predictions": ["setosa"] * 300_000}).encode()
    write_capture(
        shadow,
        "shadow",
        "21-10-05-456-b.jsonl",
        [
            capture_event("e1", b'{"predictions": ["setosa"]}', encoding="BASE64"),
            "not json at all",
            "[" * 5000 + "]" * 5000,
            capture_event("e2", b'{"predictions": [1.5, 3.0]}'),
            capture_event("e3", b'{"error": "object \'Petal.Width\' not found"}'),
            capture_event("e6", too_deep),
            capture_event("e7", too_long),
        ],
    )

    assert shadows_collect_pairs() == 4
    assert pairs(shadow) == [
        (200, 200, ["setosa"], ["setosa"], "", None),
        (200, 200, [1.5, 2.5], [1.5, 3.0], "", None),
        (200, 500, ["virginica"], None, "object 'Petal.Width' not found", None),
        (200, 200, ["setosa"], None, "The answer is not comparable JSON (nested more than 64 deep).", None),
    ]
    # The files already read are not read again.
    assert shadows_collect_pairs() == 0

    # A request whose shadow answer is written in a later file is paired then; one the
    # shadow has not answered (yet) waits.
    write_capture(
        shadow,
        "main",
        "21-11-00-001-c.jsonl",
        [capture_event("e4", b'{"predictions": ["versicolor"]}'), capture_event("e5", b'{"predictions": [0]}')],
    )
    assert shadows_collect_pairs() == 0
    write_capture(shadow, "shadow", "21-11-30-002-d.jsonl", [capture_event("e4", b'{"predictions": ["setosa"]}')])
    assert shadows_collect_pairs() == 1
    assert pairs(shadow)[-1] == (200, 200, ["versicolor"], ["setosa"], "", None)
    shadow.refresh_from_db()
    assert shadow.copies_sent == 5


def test_promote_serves_the_shadows_model_without_a_build_and_retires_the_old_one(
    aws: MotoServer, owner: User, api_client_for: Any
) -> None:
    endpoint = live_endpoint(owner, api_client_for)
    shadow = start_shadow(owner, endpoint)
    write_capture(shadow, "main", "21-10-05-123-a.jsonl", [capture_event("e1", b'{"predictions": ["setosa"]}')])
    write_capture(shadow, "shadow", "21-10-05-456-b.jsonl", [capture_event("e1", b'{"predictions": ["virginica"]}')])

    promotion, updates = run(shadow_promote(endpoint=endpoint))

    assert builds_started() == 1
    assert updates == [rollout_name(promotion)]
    served = aws_client("sagemaker").describe_endpoint_config(EndpointConfigName=rollout_name(promotion))
    assert [v["ModelName"] for v in served["ProductionVariants"]] == [rollout_name(shadow.deployment)]
    # The previous model and both configs are gone; the shadow's model serves.
    assert_cloud(
        serving=rollout_name(promotion),
        models_left={rollout_name(shadow.deployment)},
        configs_left={rollout_name(promotion)},
    )
    # The last pairs were collected before the capture files went with the shadow's config.
    assert pairs(shadow) == [(200, 200, ["setosa"], ["virginica"], "", None)]
    assert capture_keys() == []
    assert_finished(shadow, Shadow.Status.PROMOTED, serving=shadow.model_version)
    endpoint.refresh_from_db()
    assert endpoint.runtime["deployment"] == promotion.pk


def test_ending_a_shadow_puts_the_live_config_back_and_removes_the_shadow(
    aws: MotoServer, owner: User, api_client_for: Any
) -> None:
    endpoint = live_endpoint(owner, api_client_for)
    creation = latest("iris-sm")
    shadow = start_shadow(owner, endpoint)
    write_capture(shadow, "shadow", "21-10-05-456-b.jsonl", [capture_event("e1", b'{"predictions": ["setosa"]}')])

    _ending, updates = run(shadow_end(endpoint=endpoint))

    live = rollout_name(creation)
    assert updates == [live]
    assert_cloud(serving=live, models_left={live}, configs_left={live})
    assert capture_keys() == []
    assert_finished(shadow, Shadow.Status.ENDED, serving=creation.model_version)


def test_a_worker_killed_at_every_aws_call_of_every_shadow_step_leaves_exactly_one_of_each(
    aws: MotoServer, owner: User, api_client_for: Any
) -> None:
    endpoint = live_endpoint(owner, api_client_for)
    creation = latest("iris-sm")
    shadow = begin_shadow(owner, endpoint, sample_percent=50)
    started, updates = run(shadow.deployment, kill_at_every_call=True)
    live = rollout_name(creation)
    assert updates == [rollout_name(started)]
    assert builds_started() == 1
    assert_cloud(
        serving=rollout_name(started),
        models_left={live, rollout_name(started)},
        configs_left={live, rollout_name(started)},
    )
    write_capture(shadow, "main", "21-10-05-123-a.jsonl", [capture_event("e1", b'{"predictions": ["setosa"]}')])
    write_capture(shadow, "shadow", "21-10-05-456-b.jsonl", [capture_event("e1", b'{"predictions": ["setosa"]}')])

    _ending, updates = run(shadow_end(endpoint=endpoint), kill_at_every_call=True)
    assert updates == [live]
    assert_cloud(serving=live, models_left={live}, configs_left={live})
    assert capture_keys() == []
    # Killed inside the last collection too, the pair is stored once.
    assert len(pairs(shadow)) == 1
    assert_finished(shadow, Shadow.Status.ENDED, serving=creation.model_version)

    # A second shadow, promoted with a kill at every call.
    shadow = start_shadow(owner, endpoint)
    promotion, updates = run(shadow_promote(endpoint=endpoint), kill_at_every_call=True)
    assert updates == [rollout_name(promotion)]
    assert_cloud(
        serving=rollout_name(promotion),
        models_left={rollout_name(shadow.deployment)},
        configs_left={rollout_name(promotion)},
    )
    assert_finished(shadow, Shadow.Status.PROMOTED, serving=shadow.model_version)


def test_deleting_an_endpoint_with_a_running_shadow_leaves_nothing(
    aws: MotoServer, owner: User, api_client_for: Any
) -> None:
    shadow = start_shadow(owner, live_endpoint(owner, api_client_for))
    write_capture(shadow, "shadow", "21-10-05-456-b.jsonl", [capture_event("e1", b'{"predictions": ["setosa"]}')])

    assert api_client_for(owner).delete("/api/v1/endpoints/iris-sm/").status_code == 202
    deletion = drive(latest("iris-sm"))

    assert deletion.status == Deployment.Status.SUCCEEDED, deletion.error
    assert tagged() == []
    assert set(counts().values()) == {0}
    assert capture_keys() == []
    shadow.refresh_from_db()
    assert shadow.status == Shadow.Status.ENDED


def test_a_shadow_that_fails_to_come_up_leaves_the_live_version_serving_alone(
    aws: MotoServer, owner: User, api_client_for: Any
) -> None:
    endpoint = live_endpoint(owner, api_client_for)
    creation = latest("iris-sm")
    shadow = begin_shadow(owner, endpoint, sample_percent=10)
    sagemaker = aws_client("sagemaker")
    name = endpoint_name(endpoint)
    described = {
        "EndpointName": name,
        "EndpointArn": f"arn:aws:sagemaker:us-east-1:123456789012:endpoint/{name}",
        "EndpointConfigName": rollout_name(creation),
        "EndpointStatus": "InService",
        "CreationTime": 0,
        "LastModifiedTime": 0,
    }
    failed = {
        **described,
        "EndpointConfigName": rollout_name(shadow.deployment),
        "EndpointStatus": "Failed",
        "FailureReason": "The shadow variant shadow did not pass the ping health check.",
    }
    with EndpointUpdates(sagemaker) as updates, SingleCallStubber(sagemaker, "DescribeEndpoint") as stub:
        # deploy_shadow finds the endpoint on the live config (and so does EndpointUpdates,
        # reading its tags), then SageMaker fails the update; the cleanup's calls reach moto.
        stub.add_response("describe_endpoint", described)
        stub.add_response("describe_endpoint", described)
        stub.add_response("describe_endpoint", failed)
        deployment = drive(shadow.deployment)

    assert deployment.status == Deployment.Status.FAILED
    assert "did not pass the ping health check" in deployment.error
    # The cleanup put the live config back before removing the shadow's model and config.
    assert [call["EndpointConfigName"] for call in updates.calls] == [rollout_name(deployment), rollout_name(creation)]
    live = rollout_name(creation)
    assert_cloud(serving=live, models_left={live}, configs_left={live})
    shadow.refresh_from_db()
    endpoint.refresh_from_db()
    assert shadow.status == Shadow.Status.FAILED
    assert endpoint.status == Endpoint.Status.LIVE
    assert endpoint.model_version_id == creation.model_version_id
    assert counts() == ONE_PUBLIC_ENDPOINT


def test_a_serverless_endpoint_refuses_a_shadow_before_building(
    aws: MotoServer, owner: User, api_client_for: Any
) -> None:
    create_public(owner, api_client_for, serverless={"memory_mb": 2048, "max_concurrency": 5})
    assert drive(latest("iris-sm")).status == Deployment.Status.SUCCEEDED
    endpoint = Endpoint.objects.get(name="iris-sm")

    shadow = begin_shadow(owner, endpoint, sample_percent=10)
    deployment = drive(shadow.deployment)

    assert deployment.status == Deployment.Status.FAILED
    assert "Serverless Inference has no shadow variants" in deployment.error
    assert builds_started() == 1
    assert len(models()) == 1


def test_the_documented_execution_role_writes_this_installations_captures_only() -> None:
    def capture_object() -> str:
        folder = capture_key_prefix(rollout_name(Deployment(pk=42, endpoint=Endpoint(name="iris"))))
        return f"arn:aws:s3:::{PLACEHOLDERS['BUCKET']}/{folder}/endpoint/shadow/{HOUR}/21-10-05-123-a.jsonl"

    writes = policy_patterns("sagemaker-execution-policy.json")["s3:PutObject"]
    assert any(fnmatchcase(capture_object(), pattern) for pattern in writes)
    with override_settings(INSTALLATION_ID=f"{settings.INSTALLATION_ID}x"):
        theirs = capture_object()
    assert not any(fnmatchcase(theirs, pattern) for pattern in writes)


def test_answers_a_database_cannot_hold_are_stored_as_reasons_and_the_files_read_once(
    aws: MotoServer, owner: User, api_client_for: Any
) -> None:
    """NaN, infinities and NUL characters (which PostgreSQL's jsonb refuses) in the model's
    answers and in event ids: a refusal there rolled back the whole collection, cursors
    included, so the same files failed at every collection."""
    shadow = start_shadow(owner, live_endpoint(owner, api_client_for), sample_percent=100)
    live = [capture_event(f"e{n}\u0000", b'{"predictions": ["setosa"]}') for n in (1, 2, 3)]
    write_capture(shadow, "main", "21-10-05-123-a.jsonl", [json.dumps(event) for event in live])
    answers = [b'{"predictions": [NaN]}', b'{"predictions": [1e999]}', b'{"predictions": ["set\\u0000osa"]}']
    copies = [capture_event(f"e{n}\u0000", answer) for n, answer in zip((1, 2, 3), answers, strict=True)]
    write_capture(shadow, "shadow", "21-10-05-456-b.jsonl", [json.dumps(event) for event in copies])

    assert shadows_collect_pairs() == 3
    assert [pair[1:] for pair in pairs(shadow)] == [
        (200, ["setosa"], None, "The answer is not comparable JSON (NaN is not a number JSON has).", None),
        (200, ["setosa"], None, "The answer is not comparable JSON (1e999 is larger than a number can be).", None),
        (200, ["setosa"], ["setosa"], "", None),
    ]
    assert shadows_collect_pairs() == 0


def test_lone_surrogates_anywhere_in_a_capture_line_are_stored_as_question_marks(
    aws: MotoServer, owner: User, api_client_for: Any
) -> None:
    """UTF-8 cannot encode a lone surrogate: in an answer waiting for its other half, an
    error message or an event id it failed the whole collection, at every collection."""
    shadow = start_shadow(owner, live_endpoint(owner, api_client_for), sample_percent=100)
    live = [
        capture_event("e1", b'{"predictions": ["setosa"]}'),
        capture_event("e2\ud800", b'{"predictions": ["setosa"]}'),
        # Waits for a shadow half that never comes: stored in the record's jsonb.
        capture_event("e3", b'{"predictions": ["\\ud800"]}'),
    ]
    write_capture(shadow, "main", "21-10-05-123-a.jsonl", [json.dumps(event) for event in live])
    copies = [
        capture_event("e1", b'{"error": "predict() failed \\udfff"}'),
        capture_event("e2\ud800", '{"predictions": ["\ud800"]}'.encode("utf-8", "surrogatepass"), encoding="BASE64"),
    ]
    write_capture(shadow, "shadow", "21-10-05-456-b.jsonl", [json.dumps(event) for event in copies])

    assert shadows_collect_pairs() == 2
    assert [pair[1:5] for pair in pairs(shadow)] == [
        (500, ["setosa"], None, "predict() failed ?"),
        # Python's JSON reads bytes with "surrogatepass": the half-pair becomes "?" too.
        (200, ["setosa"], ["?"], ""),
    ]
    record = shadow_config_record(shadow)
    assert record is not None
    assert record.details["capture_waiting"]["main"] == [["e3", ["?"], "", ""]]
    assert shadows_collect_pairs() == 0


def test_one_collection_reads_about_its_byte_budget_and_the_rest_next_time(
    aws: MotoServer, owner: User, api_client_for: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shadow_capture, "MAX_BYTES_PER_VARIANT", 1)
    shadow = start_shadow(owner, live_endpoint(owner, api_client_for), sample_percent=100)
    for number in (1, 2):
        answer = json.dumps({"predictions": [number]}).encode()
        write_capture(shadow, "main", f"21-10-0{number}-a.jsonl", [capture_event(f"e{number}", answer)])
        write_capture(shadow, "shadow", f"21-10-0{number}-b.jsonl", [capture_event(f"e{number}", answer)])

    assert shadows_collect_pairs() == 1
    assert shadows_collect_pairs() == 1
    assert shadows_collect_pairs() == 0
    assert [pair[2] for pair in pairs(shadow)] == [[1], [2]]


def test_answers_waiting_for_their_other_half_are_kept_newest_first_within_a_byte_budget() -> None:
    newest = shadow_capture.MAX_PENDING - 1
    answers = {f"e{n}": CapturedAnswer(f"e{n}", ["x" * 3000], "") for n in range(newest + 1)}

    kept = shadow_capture._still_waiting(answers)

    assert 0 < len(kept) < shadow_capture.MAX_PENDING
    # As many of the newest as fit: one more would not.
    size = sum(len(json.dumps(item)) for item in kept)
    assert size <= shadow_capture.MAX_PENDING_BYTES < size + len(json.dumps(answers["e0"].as_json()))
    assert [item[0] for item in kept] == [f"e{n}" for n in range(newest + 1 - len(kept), newest + 1)]


@override_settings(SHADOW_MAX_PAIRS=2, SHADOW_MAX_ROWS=2)
def test_a_shadow_keeps_its_newest_pairs_and_the_first_rows_of_each_answer(
    aws: MotoServer, owner: User, api_client_for: Any
) -> None:
    shadow = start_shadow(owner, live_endpoint(owner, api_client_for), sample_percent=100)

    def answer(number: int) -> bytes:
        return json.dumps({"predictions": [number] * 3}).encode()

    write_capture(shadow, "main", "21-10-05-123-a.jsonl", [capture_event(f"e{n}", answer(n)) for n in (1, 2, 3)])
    write_capture(shadow, "shadow", "21-10-05-456-b.jsonl", [capture_event(f"e{n}", answer(n * 10)) for n in (1, 2, 3)])

    assert shadows_collect_pairs() == 3

    assert pairs(shadow) == [(200, 200, [2, 2], [20, 20], "", None), (200, 200, [3, 3], [30, 30], "", None)]
    shadow.refresh_from_db()
    assert shadow.copies_sent == 3


def test_rdeploy_gc_deleting_a_forgotten_shadow_config_deletes_its_capture_files(
    aws: MotoServer, owner: User, api_client_for: Any
) -> None:
    shadow = start_shadow(owner, live_endpoint(owner, api_client_for))
    write_capture(shadow, "shadow", "21-10-05-456-b.jsonl", [capture_event("e1", b'{"predictions": ["setosa"]}')])
    config = rollout_name(shadow.deployment)
    # As if rdeploy's record of the config were lost (a restored database backup).
    ExternalResource.objects.filter(kind=ExternalResource.Kind.SAGEMAKER_ENDPOINT_CONFIG, identifier=config).delete()

    orphans = cloud_orphans()
    assert [(o.kind, o.identifier) for o in orphans] == [(ExternalResource.Kind.SAGEMAKER_ENDPOINT_CONFIG, config)]
    cloud_orphans_delete(orphans)

    assert config not in configs()
    assert capture_keys() == []
