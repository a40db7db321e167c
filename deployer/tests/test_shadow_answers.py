"""What a shadow pair keeps of a model's answers (hostile input), and storing pairs the
database refuses one at a time instead of losing their batch."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.db import connection

from deployer.models import Endpoint, Shadow, ShadowPair
from deployer.services.shadow_copies import shadow_pairs_store
from deployer.shadow_answers import MAX_KEPT_BYTES, MAX_KEYS, MAX_READ_BYTES, KeptAnswer, answer_kept
from testsupport.factories import make_endpoint, make_model_version, make_shadow


def test_the_predictions_and_their_first_rows_are_kept() -> None:
    rows = list(range(settings.SHADOW_MAX_ROWS + 5))
    assert answer_kept(json.dumps({"predictions": rows, "extra": 1}).encode()) == KeptAnswer(
        rows[: settings.SHADOW_MAX_ROWS]
    )
    assert answer_kept(b'{"value": 2}') == KeptAnswer({"value": 2})
    # Not JSON at all: nothing kept, and nothing to explain (its rows are unmatched).
    assert answer_kept(b"\xff not json") == KeptAnswer(None)


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b'{"predictions": [NaN, 1.0]}', "NaN is not a number JSON has"),
        (b'{"predictions": [Infinity]}', "Infinity is not a number JSON has"),
        (b'{"predictions": [-Infinity]}', "-Infinity is not a number JSON has"),
        (b'{"predictions": [1e999]}', "1e999 is larger than a number can be"),
        (b"[" * 65 + b"1" + b"]" * 65, "nested more than 64 deep"),
        # Deeper than Python's parser recurses.
        (b"[" * 100_000 + b"]" * 100_000, "nested more than 64 deep"),
        (json.dumps([{f"class{n}": 0.0 for n in range(MAX_KEYS + 1)}]).encode(), "more than 1000 keys"),
    ],
)
def test_answers_a_database_or_the_comparison_cannot_hold_are_kept_as_their_reason(body: bytes, problem: str) -> None:
    kept = answer_kept(body)

    assert kept.output is None
    assert kept.reason.startswith("The answer is not comparable JSON")
    assert problem in kept.reason


def test_nul_characters_are_removed_from_labels_and_keys() -> None:
    # PostgreSQL's jsonb refuses \u0000 in any string.
    kept = answer_kept(b'{"predictions": ["set\\u0000osa", {"a\\u0000b": 1.0}]}')

    assert kept == KeptAnswer(["setosa", {"ab": 1.0}])


def test_lone_surrogates_become_question_marks_in_labels_and_keys() -> None:
    # JSON may escape half of a UTF-16 pair; UTF-8 (PostgreSQL's text and jsonb) cannot hold it.
    kept = answer_kept(b'{"predictions": ["\\ud800x", {"\\udfff": 1.0}, "caf\\u00e9"]}')

    assert kept == KeptAnswer(["?x", {"?": 1.0}, "caf\u00e9"])


def test_numbers_count_as_many_bytes_as_postgresql_writes_them() -> None:
    # 1e308 is 6 bytes here and 309 digits in jsonb: 2,600 of them are not 16 KiB but 800 KiB.
    huge = answer_kept(json.dumps([[1e308] * 26] * 100).encode())
    assert huge.output is None
    assert "too large to compare" in huge.reason

    ordinary = [[0.25, 1e-5, 123456.5] * 8] * 100
    assert answer_kept(json.dumps(ordinary).encode()) == KeptAnswer(ordinary)


def test_answers_too_large_to_read_or_to_keep_are_kept_as_their_reason() -> None:
    unread = answer_kept(b"[" + b"1," * (MAX_READ_BYTES // 2) + b"1]")
    assert unread.output is None
    size = MAX_READ_BYTES + 3
    assert unread.reason == f"The answer is too large to compare ({size} bytes, more than {MAX_READ_BYTES})."

    # Read, but its first rows are too large to store for every pair.
    label = "x" * (MAX_KEPT_BYTES // settings.SHADOW_MAX_ROWS + 10)
    unkept = answer_kept(json.dumps({"predictions": [label] * settings.SHADOW_MAX_ROWS}).encode())
    assert unkept.output is None
    assert "too large to compare" in unkept.reason

    # The same rows, fewer of them: kept.
    assert answer_kept(json.dumps([label] * 10).encode()) == KeptAnswer([label] * 10)


@pytest.fixture
def shadow(transactional_db: Any, owner: User) -> Shadow:
    endpoint = make_endpoint(owner, "iris", model_version=make_model_version(owner), status=Endpoint.Status.LIVE)
    return make_shadow(endpoint, make_model_version(owner))


@pytest.mark.skipif(connection.vendor != "postgresql", reason="SQLite's JSON holds a NUL; jsonb does not")
def test_a_pair_the_database_refuses_costs_only_itself_not_its_batch(shadow: Shadow) -> None:
    def stored_pair(output: Any) -> ShadowPair:
        return ShadowPair(shadow_id=shadow.pk, live_status=200, shadow_status=200, live_output=output)

    # A value answer_kept would have cleaned, given to the store as is (the sender stores
    # outside any transaction, as here).
    shadow_pairs_store([stored_pair(["a"]), stored_pair(["b\x00"]), stored_pair(["c"])])

    kept = ShadowPair.objects.filter(shadow=shadow).order_by("id").values_list("live_output", flat=True)
    assert list(kept) == [["a"], ["c"]]
    shadow.refresh_from_db()
    assert shadow.copies_sent == 3


def test_a_pair_whose_text_utf8_cannot_encode_costs_only_itself(shadow: Shadow) -> None:
    def stored_pair(error: str) -> ShadowPair:
        return ShadowPair(shadow_id=shadow.pk, live_status=200, shadow_status=500, shadow_error=error)

    shadow_pairs_store([stored_pair("a"), stored_pair("b\ud800"), stored_pair("c")])

    kept = ShadowPair.objects.filter(shadow=shadow).order_by("id").values_list("shadow_error", flat=True)
    assert list(kept) == ["a", "c"]
