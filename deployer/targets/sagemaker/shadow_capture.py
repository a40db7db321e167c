"""A SageMaker shadow's pairs, read back from data capture (docs/shadow.md).

While a shadow runs, SageMaker copies the sampled share of live requests to the shadow
variant and its data capture writes each variant's requests and answers to S3 as JSON
Lines, ``<capture uri>/<endpoint>/<variant>/yyyy/mm/dd/hh/<file>.jsonl``, one event per
line: ``captureData.endpointOutput`` (``observedContentType``, ``mode``, ``data``,
``encoding``) and ``eventMetadata`` (``eventId``, ``inferenceTime``). rdeploy pairs a
production event with the shadow event of the same ``eventId`` (assumed, not documented:
docs/shadow.md) and stores one ``ShadowPair`` per request, keeping of each answer what
the gateway's copies keep.

The files are the model's output: untrusted input to this privileged reader. Each
collection reads a bounded number of files per variant, at most ``MAX_FILE_BYTES`` of each
(a ranged GET) and about ``MAX_BYTES_PER_VARIANT`` in all, skips lines longer than
``MAX_LINE_BYTES`` and JSON nested deeper than ``MAX_JSON_DEPTH``, keeps of each answer what
``deployer.shadow_answers`` keeps, and at most ``MAX_PENDING`` events (``MAX_PENDING_BYTES``)
per variant waiting for their other half. Per variant, a cursor (the last key read) and the waiting events live on the
shadow endpoint config's record, stored in the transaction that stores the pairs, with the
row locked meanwhile: a rerun or a concurrent collection never stores a pair twice.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F

from deployer.integrations.aws import s3
from deployer.models import Endpoint, ExternalResource, Shadow, ShadowPair
from deployer.shadow_answers import answer_kept, shadow_pairs_insert, text_clean
from deployer.targets.sagemaker.names import SHADOW_VARIANT, VARIANT, endpoint_name, rollout_name, s3_location

MAX_FILES_PER_VARIANT = 50
# Read per variant and collection at most (whole files: the first one beyond it is the last).
MAX_BYTES_PER_VARIANT = 32 * 1024 * 1024
MAX_FILE_BYTES = 16 * 1024 * 1024
MAX_LINE_BYTES = 2 * 1024 * 1024
MAX_JSON_DEPTH = 64
MAX_PENDING = 500
MAX_PENDING_BYTES = 1024 * 1024
MAX_ERROR_CHARS = 500
# The capture records no HTTP status: an answer carrying "error" (the runtime's error
# body) counts as this one.
ERROR_STATUS = 500


@dataclass(frozen=True)
class CapturedAnswer:
    event_id: str
    output: Any
    # The runtime's error: the request failed.
    error: str
    # Why an answer (not an error) is not kept (deployer.shadow_answers).
    reason: str = ""

    def as_json(self) -> list[Any]:
        return [self.event_id, self.output, self.error, self.reason]


def _within_depth(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return False
        if isinstance(item, dict):
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
    return True


def _bounded_json(text: bytes | str) -> Any:
    """Parsed JSON, or None when it is not JSON, too long or too deep."""
    if len(text) > MAX_LINE_BYTES:
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return value if _within_depth(value, MAX_JSON_DEPTH) else None


def _body(output: Any) -> bytes | None:
    """The answer's bytes as captured: text for JSON and CSV, base64 otherwise."""
    if not isinstance(output, dict) or not isinstance(output.get("data"), str):
        return None
    if output.get("encoding") == "BASE64":
        try:
            return base64.b64decode(output["data"], validate=True)
        except (binascii.Error, ValueError):
            return None
    # "replace": a lone surrogate in the line's JSON has no UTF-8.
    return str(output["data"]).encode("utf-8", "replace")


def captured_answer(line: bytes) -> CapturedAnswer | None:
    """One capture event's answer, or None for a line that is not one."""
    event = _bounded_json(line)
    if not isinstance(event, dict):
        return None
    metadata, capture = event.get("eventMetadata"), event.get("captureData")
    if not isinstance(metadata, dict) or not isinstance(capture, dict) or not metadata.get("eventId"):
        return None
    # Stored with the waiting events, in jsonb.
    event_id = text_clean(str(metadata["eventId"]))[:200]
    body = _body(capture.get("endpointOutput"))
    if body is None:
        return CapturedAnswer(event_id, None, "SageMaker captured no answer for this request.")
    kept = answer_kept(body)
    # An error body has no "predictions", so it is kept whole.
    if isinstance(kept.output, dict) and "error" in kept.output:
        return CapturedAnswer(event_id, None, text_clean(str(kept.output["error"]))[:MAX_ERROR_CHARS] or "error")
    return CapturedAnswer(event_id, kept.output, "", kept.reason)


def _answers(bucket: str, key: str) -> tuple[list[CapturedAnswer], int]:
    """The file's answers, and how many bytes were read of it."""
    data = s3.read_start(bucket, key, max_bytes=MAX_FILE_BYTES)
    lines = data.split(b"\n")
    if len(data) >= MAX_FILE_BYTES:
        lines = lines[:-1]  # cut off by the cap: its last line is incomplete
    return [answer for line in lines if line.strip() and (answer := captured_answer(line)) is not None], len(data)


def _pair(shadow: Shadow, live: CapturedAnswer, copy: CapturedAnswer) -> ShadowPair:
    return ShadowPair(
        shadow=shadow,
        live_status=ERROR_STATUS if live.error else 200,
        shadow_status=ERROR_STATUS if copy.error else 200,
        # Data capture records no latency (CloudWatch's ModelLatency is per variant only).
        live_ms=None,
        shadow_ms=None,
        live_output=live.output,
        shadow_output=copy.output,
        # An answer kept as nothing for a reason is not compared: the reason shows with the errors.
        shadow_error=copy.error or copy.reason or (live.reason and f"Live: {live.reason}"),
    )


def _store(shadow: Shadow, pairs: list[ShadowPair], copies: int) -> None:
    # A pair the database refuses is left out alone: the cursors still move past its file.
    shadow_pairs_insert(pairs)
    Shadow.objects.filter(pk=shadow.pk).update(copies_sent=F("copies_sent") + copies)
    newest = ShadowPair.objects.filter(shadow=shadow).order_by("-id").values_list("id", flat=True)
    beyond = list(newest[settings.SHADOW_MAX_PAIRS : settings.SHADOW_MAX_PAIRS + 1])
    if beyond:
        ShadowPair.objects.filter(shadow=shadow, id__lte=beyond[0]).delete()


def shadow_config_record(shadow: Shadow) -> ExternalResource | None:
    """The live record of the shadow's endpoint config (it carries the capture's place)."""
    return (
        ExternalResource.objects.live()
        .named(
            Endpoint.Target.SAGEMAKER,
            ExternalResource.Kind.SAGEMAKER_ENDPOINT_CONFIG,
            rollout_name(shadow.deployment),
        )
        .first()
    )


def _still_waiting(answers: dict[str, CapturedAnswer]) -> list[list[Any]]:
    """The newest answers waiting for their other half, at most MAX_PENDING of them and
    MAX_PENDING_BYTES as JSON (a list: JSON keeps its order). Below 100 % sampling most live
    requests never get a shadow half, so the list is always full: it is read and written at
    every collection."""
    kept: list[list[Any]] = []
    size = 0
    for answer in reversed(list(answers.values())[-MAX_PENDING:]):
        entry = answer.as_json()
        size += len(json.dumps(entry))
        if size > MAX_PENDING_BYTES:
            break
        kept.append(entry)
    return kept[::-1]


def collect_shadow_pairs(shadow: Shadow) -> int:
    """Store the pairs of the capture files written since the last collection; returns how many."""
    record = shadow_config_record(shadow)
    if record is None or not record.details.get("capture_uri"):
        return 0
    bucket, key_prefix = s3_location(str(record.details["capture_uri"]))
    with transaction.atomic():
        resource = record.locked()
        cursors: dict[str, str] = dict(resource.details.get("capture_cursors", {}))
        waiting: dict[str, dict[str, CapturedAnswer]] = {
            variant: {
                item[0]: CapturedAnswer(*item) for item in resource.details.get("capture_waiting", {}).get(variant, [])
            }
            for variant in (VARIANT, SHADOW_VARIANT)
        }
        copies = 0
        for variant in (VARIANT, SHADOW_VARIANT):
            folder = f"{key_prefix}/{endpoint_name(shadow.endpoint)}/{variant}/"
            found = s3.objects_after(bucket, folder, start_after=cursors.get(variant, ""), limit=MAX_FILES_PER_VARIANT)
            budget = MAX_BYTES_PER_VARIANT
            for stored in found:
                if budget <= 0:  # the rest next time: one collection's work stays bounded
                    break
                answers, read = _answers(bucket, stored.key)
                budget -= read
                for answer in answers:
                    waiting[variant][answer.event_id] = answer
                    copies += variant == SHADOW_VARIANT
                cursors[variant] = stored.key
        pairs = []
        for event_id in [event_id for event_id in waiting[SHADOW_VARIANT] if event_id in waiting[VARIANT]]:
            pairs.append(_pair(shadow, waiting[VARIANT].pop(event_id), waiting[SHADOW_VARIANT].pop(event_id)))
        _store(shadow, pairs, copies)
        resource.merge_details(
            capture_cursors=cursors,
            capture_waiting={variant: _still_waiting(answers) for variant, answers in waiting.items()},
        )
    return len(pairs)
