"""The shadow comparison on small pair sets whose figures are worked out by hand here."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.db import connection

from deployer.models import Endpoint, Shadow, ShadowPair
from deployer.services import shadow_comparison as shadow_comparison_module
from deployer.services.shadow_comparison import (
    CONFUSION_LABELS,
    MAX_LABEL_CHARS,
    ConfusionTable,
    ErrorCount,
    Histogram,
    Latency,
    _memos,
    _Tally,
    shadow_comparison,
    shadow_comparison_shown,
    shadow_latest,
)
from testsupport.factories import make_endpoint, make_model_version, make_shadow

pytestmark = pytest.mark.django_db


@pytest.fixture
def shadow(owner: User) -> Shadow:
    live = make_model_version(owner)
    endpoint = make_endpoint(owner, "iris", model_version=live, status=Endpoint.Status.LIVE)
    return make_shadow(endpoint, make_model_version(owner), copies_sent=9, copies_dropped=2)


def pair(live: Any, answer: Any, **fields: Any) -> dict[str, Any]:
    return {"live_output": live, "shadow_output": answer, "live_status": 200, "shadow_status": 200} | fields


def store(shadow: Shadow, *pairs: dict[str, Any]) -> None:
    ShadowPair.objects.bulk_create(ShadowPair(shadow=shadow, **fields) for fields in pairs)


def test_classes_give_agreement_a_confusion_table_errors_and_latency(shadow: Shadow) -> None:
    store(
        shadow,
        pair(["setosa", "setosa", "versicolor"], ["setosa", "versicolor", "versicolor"], live_ms=10, shadow_ms=15),
        pair(["virginica"], ["virginica"], live_ms=20, shadow_ms=25),
        # The live version refused this request: left out of everything but its latency.
        pair(None, None, live_status=400, live_ms=30, shadow_ms=35, shadow_status=400, shadow_error="bad"),
        pair(["setosa"], None, shadow_status=500, shadow_error="predict() failed: x", live_ms=40, shadow_ms=45),
        pair(["setosa"], None, shadow_status=None, shadow_error="The shadow did not answer: timeout", live_ms=50),
        pair(["setosa"], None, shadow_status=500, shadow_error="predict() failed: x\n", live_ms=60, shadow_ms=65),
    )

    comparison = shadow_comparison(shadow)

    assert comparison.kind == "class"
    # 6 pairs, 1 refused by the live version; of the 5 left the shadow answered 2.
    assert (comparison.requests, comparison.live_failed, comparison.compared_requests) == (5, 1, 2)
    assert (comparison.rows_compared, comparison.rows_unmatched) == (4, 0)
    assert (comparison.copies_sent, comparison.copies_dropped) == (9, 2)
    # Rows: setosa/setosa, setosa/versicolor, versicolor/versicolor, virginica/virginica: 3 of 4.
    assert (comparison.agreed, comparison.agreement_rate) == (3, 0.75)
    assert comparison.confusion == ConfusionTable(
        labels=("setosa", "versicolor", "virginica"),
        others=False,
        counts=((1, 1, 0), (0, 1, 0), (0, 0, 1)),
    )
    assert comparison.mean_abs_difference is None
    assert comparison.histogram is None
    # 3 shadow errors of 5 requests; the same message (trailing newline aside) counted once.
    assert (comparison.shadow_errors, comparison.error_rate) == (3, 0.6)
    assert comparison.top_errors == (
        ErrorCount("predict() failed: x", 2),
        ErrorCount("The shadow did not answer: timeout", 1),
    )
    # Nearest rank. Live: 10..60 (6 values): p50 the 3rd (30), p99 the 6th (60). Shadow:
    # 15, 25, 35, 45, 65 (5 values, one pair without an answer): the 3rd and the 5th.
    assert comparison.live_latency == Latency(p50=30, p99=60)
    assert comparison.shadow_latency == Latency(p50=35, p99=65)


def test_numbers_give_differences_and_a_histogram(shadow: Shadow) -> None:
    store(
        shadow,
        pair([1.0, 2.0, 3.0], [1.75, 2.0, 2.0]),  # differences 0.75, 0, -1
        pair([10], [14]),  # 4
        pair([5.0, 6.0], [5.0]),  # 0, and a row the shadow lacks
        pair([7.0, None], [7.0, 3.0]),  # 0, and an NA that has no difference
    )

    comparison = shadow_comparison(shadow)

    assert comparison.kind == "numeric"
    assert (comparison.rows_compared, comparison.rows_unmatched) == (8, 2)
    # |0.75| + 0 + |-1| + 4 + 0 + 0 = 5.75 over 6 differences.
    assert comparison.mean_abs_difference == pytest.approx(5.75 / 6)
    assert comparison.max_abs_difference == 4
    assert comparison.agreement_rate is None
    assert comparison.confusion is None
    # From -1 to 4 in 10 bins of 0.5: -1 in the first, the three zeros in [0, 0.5), 0.75 in
    # [0.5, 1), and 4 (the end) in the last.
    assert comparison.histogram == Histogram(
        edges=(-1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0),
        counts=(1, 0, 3, 1, 0, 0, 0, 0, 0, 1),
    )


def test_identical_numbers_give_one_bin_around_zero(shadow: Shadow) -> None:
    store(shadow, pair([1.5, 2.5], [1.5, 2.5]))

    comparison = shadow_comparison(shadow)

    assert (comparison.mean_abs_difference, comparison.max_abs_difference) == (0, 0)
    assert comparison.histogram is not None
    assert comparison.histogram.edges[0] == pytest.approx(-0.5)
    assert comparison.histogram.edges[-1] == pytest.approx(0.5)
    # 0 is in [0.0, 0.1), the 6th bin.
    assert comparison.histogram.counts == (0, 0, 0, 0, 0, 2, 0, 0, 0, 0)


def test_probabilities_compare_the_most_probable_labels_and_every_probability(shadow: Shadow) -> None:
    store(
        shadow,
        # setosa against versicolor; the largest difference is 0.9 - 0.4 = 0.5.
        pair([{"setosa": 0.9, "versicolor": 0.1}], [{"setosa": 0.4, "versicolor": 0.6}]),
        # versicolor both; differences 0.125.
        pair([{"setosa": 0.25, "versicolor": 0.75}], [{"setosa": 0.125, "versicolor": 0.875}]),
    )

    comparison = shadow_comparison(shadow)

    assert comparison.kind == "probabilities"
    assert (comparison.agreed, comparison.agreement_rate) == (1, 0.5)
    assert comparison.confusion == ConfusionTable(
        labels=("setosa", "versicolor"), others=False, counts=((0, 1), (0, 1))
    )
    assert comparison.max_abs_difference == pytest.approx(0.5)
    assert comparison.mean_abs_difference is None


def test_other_answers_are_compared_exactly(shadow: Shadow) -> None:
    store(
        shadow,
        pair([[1, 2], [3, 4]], [[1, 2], [3, 5]]),  # the second row differs
        pair(None, None),  # neither answer was JSON: one row each, the same
    )

    comparison = shadow_comparison(shadow)

    assert comparison.kind == "other"
    assert (comparison.rows_compared, comparison.agreed) == (3, 2)
    assert comparison.agreement_rate == pytest.approx(2 / 3)
    assert comparison.confusion is None


def test_the_kind_is_what_most_live_rows_are_and_odd_rows_never_agree(shadow: Shadow) -> None:
    # Two labels and one number (equal on both sides): a class comparison with an unmatched row.
    store(shadow, pair(["a", "b", 3], ["a", "b", 3]), pair([True, False], [True, True]))

    comparison = shadow_comparison(shadow)

    assert comparison.kind == "class"
    assert (comparison.rows_compared, comparison.rows_unmatched, comparison.agreed) == (5, 1, 3)
    assert comparison.agreement_rate == pytest.approx(3 / 5)
    # R's logicals are the labels TRUE and FALSE.
    assert comparison.confusion is not None
    assert comparison.confusion.labels == ("FALSE", "TRUE", "a", "b")
    assert comparison.confusion.counts[0] == (0, 1, 0, 0)


def test_the_confusion_table_keeps_the_most_frequent_labels_and_adds_up_the_others(shadow: Shadow) -> None:
    # Label i answered 12 - i times by both: l10 (twice) and l11 (once) are the least frequent.
    labels = [f"l{i:02d}" for i in range(12) for _ in range(12 - i)]
    store(shadow, pair(labels, labels))

    confusion = shadow_comparison(shadow).confusion

    assert confusion is not None
    assert confusion.labels == tuple(f"l{i:02d}" for i in range(CONFUSION_LABELS))
    assert confusion.others
    # The diagonal: 12, 11, ..., 3, then the others' 2 + 1.
    assert [confusion.counts[i][i] for i in range(CONFUSION_LABELS + 1)] == [*range(12, 2, -1), 3]
    assert sum(map(sum, confusion.counts)) == len(labels)


def test_a_shadow_without_pairs_has_no_figures_yet(shadow: Shadow) -> None:
    comparison = shadow_comparison(shadow)

    assert comparison.kind == ""
    assert (comparison.requests, comparison.rows_compared, comparison.copies_sent) == (0, 0, 9)
    assert comparison.agreement_rate is None
    assert comparison.error_rate is None
    assert comparison.live_latency == Latency(None, None)


def test_the_pairs_are_read_in_one_streamed_query(shadow: Shadow, django_assert_num_queries: Any) -> None:
    store(shadow, *(pair(["setosa"] * 100, ["setosa"] * 99 + ["virginica"], live_ms=i) for i in range(1200)))

    with django_assert_num_queries(1):
        comparison = shadow_comparison(shadow)

    assert (comparison.requests, comparison.rows_compared, comparison.agreed) == (1200, 120_000, 118_800)
    assert comparison.confusion is not None
    assert comparison.confusion.counts == ((118_800, 1200), (0, 0))


def test_the_latest_shadow_is_the_active_one_or_else_the_newest(shadow: Shadow, owner: User) -> None:
    endpoint = shadow.endpoint
    assert shadow_latest(endpoint) == shadow
    Shadow.objects.filter(pk=shadow.pk).update(status=Shadow.Status.ENDED)
    later = make_shadow(endpoint, make_model_version(owner), status=Shadow.Status.FAILED)
    assert shadow_latest(endpoint) == later
    assert shadow_latest(make_endpoint(owner, "never")) is None


def test_differences_too_large_for_a_float_are_unmatched(shadow: Shadow) -> None:
    # 1e308 - (-1e308) overflows: neither the mean nor the histogram may see an infinity.
    store(shadow, pair([1e308, 1.0], [-1e308, 1.5]), pair([2], [3]))

    comparison = shadow_comparison(shadow)

    assert (comparison.kind, comparison.rows_compared, comparison.rows_unmatched) == ("numeric", 3, 1)
    assert (comparison.mean_abs_difference, comparison.max_abs_difference) == (0.75, 1.0)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["class", "numeric"])
def test_a_full_shadow_is_compared_in_one_pass_and_its_time_printed(shadow: Shadow, kind: str) -> None:
    """The largest comparison the default settings keep (5000 pairs of 100 rows); prints the
    time, asserts only the figures. -s shows it."""
    pairs, rows = settings.SHADOW_MAX_PAIRS, settings.SHADOW_MAX_ROWS
    labels = ["setosa", "versicolor", "virginica"]

    def value(request: int, row: int, version: int) -> Any:
        # Every value distinct for numbers (the slowest case); labels agree when version 1's
        # and 2's index are the same modulo 3, i.e. when `request` is a multiple of 3.
        index = request * version + row
        return labels[index % 3] if kind == "class" else index / 7 + version

    ShadowPair.objects.bulk_create(
        ShadowPair(
            shadow=shadow, live_status=200, shadow_status=200, live_ms=1, shadow_ms=2,
            live_output=[value(request, row, 1) for row in range(rows)],
            shadow_output=[value(request, row, 2) for row in range(rows)],
        )
        for request in range(pairs)
    )  # fmt: skip

    started, cpu = time.perf_counter(), time.process_time()
    comparison = shadow_comparison(shadow)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu

    # The CPU time of this process too: on a loaded machine the wall time is mostly waiting.
    print(f"\nshadow_comparison, {kind}, {pairs} pairs x {rows} rows: {elapsed * 1000:.0f} ms", end=" ")
    print(f"({cpu * 1000:.0f} ms CPU)")
    assert comparison.rows_compared == pairs * rows
    if kind == "class":
        assert comparison.agreed == len(range(0, pairs, 3)) * rows
    else:
        assert comparison.rows_unmatched == 0


def test_sums_and_ranges_beyond_a_float_still_give_finite_figures(shadow: Shadow) -> None:
    # Each difference holds in a float (1.6e308), their sum and the histogram's range do not.
    store(shadow, pair([-8e307, -8e307], [8e307, 8e307]), pair([8e307], [-8e307]))

    comparison = shadow_comparison(shadow)

    assert comparison.mean_abs_difference == pytest.approx(1.6e308)
    assert comparison.max_abs_difference == pytest.approx(1.6e308)
    assert comparison.histogram is not None
    assert all(map(math.isfinite, comparison.histogram.edges))
    assert sum(comparison.histogram.counts) == 3


def test_an_integer_no_float_holds_is_unmatched_not_an_error(shadow: Shadow) -> None:
    store(shadow, pair([10**400, 1, 3], [1, 2, 3]))

    comparison = shadow_comparison(shadow)

    assert (comparison.kind, comparison.rows_compared, comparison.rows_unmatched) == ("numeric", 3, 1)
    assert comparison.mean_abs_difference == 0.5


def test_probabilities_of_opposite_huge_values_leave_the_max_difference_finite(shadow: Shadow) -> None:
    store(shadow, pair([{"a": 1e308, "b": 0.0}], [{"a": -1e308, "b": 0.5}]), pair([{"a": 1.0}], [{"a": 0.75}]))

    comparison = shadow_comparison(shadow)

    assert comparison.kind == "probabilities"
    assert comparison.max_abs_difference == 0.5


def test_long_labels_are_compared_and_shown_by_their_start(shadow: Shadow) -> None:
    long_label = "x" * (MAX_LABEL_CHARS + 1000)
    store(shadow, pair([long_label, long_label + "y"], [long_label, long_label]))

    comparison = shadow_comparison(shadow)

    assert comparison.confusion is not None
    assert comparison.confusion.labels == ("x" * MAX_LABEL_CHARS,)
    assert comparison.agreed == 2


def test_answers_kept_as_a_reason_count_with_the_errors_not_as_unmatched_rows(shadow: Shadow) -> None:
    too_large = "The answer is too large to compare (2000000 bytes, more than 1048576)."
    store(
        shadow,
        pair(["setosa"], ["setosa"]),
        pair(["setosa"], None, shadow_error=too_large),
        pair(None, ["setosa"], shadow_error=f"Live: {too_large}"),
    )

    comparison = shadow_comparison(shadow)

    assert (comparison.requests, comparison.compared_requests, comparison.rows_compared) == (3, 1, 1)
    assert comparison.top_errors == (ErrorCount(f"Live: {too_large}", 1), ErrorCount(too_large, 1))
    assert comparison.shadow_errors == 2


def test_numbers_that_all_hash_alike_are_compared_row_by_row_never_in_a_hash_table(shadow: Shadow) -> None:
    """Every multiple of 2**61 - 1 hashes alike: counted in a Counter, each row walked every
    earlier one (400 such pairs took 54 s). Counted here, not timed."""
    flood = [k * (2**61 - 1) for k in range(1, 101)]
    assert len({hash(number) for number in flood}) == 1, "the attack: every value in one bucket"
    tally = _Tally()

    tally.add_request(flood, flood[::-1])
    tally.add_request([True, "b", None], [True, "c", "a"])

    assert set(tally.values) == {(True, True), ("b", "c"), (None, "a")}, "only the labels were hashed"
    store(shadow, *(pair(flood, flood) for _ in range(20)))
    comparison = shadow_comparison(shadow)
    assert (comparison.kind, comparison.rows_compared, comparison.rows_unmatched) == ("numeric", 2000, 0)
    assert comparison.max_abs_difference == 0.0


@pytest.fixture
def no_memos() -> Iterator[None]:
    _memos.clear()
    yield
    _memos.clear()


def test_the_shown_comparison_is_computed_again_only_when_the_pairs_change(
    shadow: Shadow, no_memos: None, django_assert_num_queries: Any
) -> None:
    store(shadow, pair(["setosa"], ["setosa"]))
    first = shadow_comparison_shown(shadow)

    with django_assert_num_queries(1):  # the pairs' version, not the pairs
        assert shadow_comparison_shown(shadow) is first

    store(shadow, pair(["setosa"], ["virginica"]))
    second = shadow_comparison_shown(shadow)
    assert (first.requests, second.requests, second.agreed) == (1, 2, 1)
    shadow.copies_sent += 1
    assert shadow_comparison_shown(shadow).copies_sent == 10


def test_a_pair_replaced_below_the_newest_is_seen_and_a_failed_computation_keeps_no_lock(
    shadow: Shadow, no_memos: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two web processes' inserts can commit out of order and a trim remove the oldest:
    the newest id and the count stay, one pair is another."""
    ShadowPair.objects.bulk_create(
        ShadowPair(shadow=shadow, id=pair_id, **pair(["setosa"], ["setosa"])) for pair_id in (10**9, 10**9 + 20)
    )
    assert shadow_comparison_shown(shadow).agreed == 2
    ShadowPair.objects.filter(id=10**9).delete()
    ShadowPair.objects.create(shadow=shadow, id=10**9 + 10, **pair(["setosa"], ["virginica"]))
    assert shadow_comparison_shown(shadow).agreed == 1

    def fails(shadow: Shadow) -> Any:
        raise RuntimeError("the database went away")

    monkeypatch.setattr(shadow_comparison_module, "shadow_comparison", fails)
    _memos.clear()
    with pytest.raises(RuntimeError):
        shadow_comparison_shown(shadow)
    assert shadow.pk not in shadow_comparison_module._computing


def test_a_slow_comparison_is_shown_again_for_twice_its_time(
    shadow: Shadow, no_memos: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its time is measured on a clock the test moves: computing "takes" 1 s."""
    now = [1000.0]
    monkeypatch.setattr(shadow_comparison_module, "_clock", lambda: now[0])
    computed = shadow_comparison_module.shadow_comparison

    def one_second(shadow: Shadow) -> Any:
        now[0] += 1.0
        return computed(shadow)

    monkeypatch.setattr(shadow_comparison_module, "shadow_comparison", one_second)
    store(shadow, pair(["setosa"], ["setosa"]))
    first = shadow_comparison_shown(shadow)
    store(shadow, pair(["setosa"], ["virginica"]))

    now[0] += 1.9
    assert shadow_comparison_shown(shadow) is first, "younger than 2 s: shown again"
    now[0] += 0.2
    assert shadow_comparison_shown(shadow).requests == 2


def test_requests_for_one_shadow_wait_for_its_comparison_rather_than_compute_it_again(
    transactional_db: None, owner: User, no_memos: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    live = make_model_version(owner)
    endpoint = make_endpoint(owner, "iris", model_version=live, status=Endpoint.Status.LIVE)
    shadow = make_shadow(endpoint, make_model_version(owner))
    store(shadow, pair(["setosa"], ["setosa"]))
    computed = shadow_comparison_module.shadow_comparison
    versions_read = threading.Semaphore(0)
    release = threading.Event()
    computations: list[int] = []
    read_version = shadow_comparison_module._pairs_version

    def counted_version(shadow: Shadow) -> Any:
        try:
            return read_version(shadow)
        finally:
            versions_read.release()

    def held(shadow: Shadow) -> Any:
        computations.append(shadow.pk)
        assert release.wait(60)
        return computed(shadow)

    monkeypatch.setattr(shadow_comparison_module, "_pairs_version", counted_version)
    monkeypatch.setattr(shadow_comparison_module, "shadow_comparison", held)
    shown: list[Any] = []

    def show() -> None:
        try:
            shown.append(shadow_comparison_shown(Shadow.objects.get(pk=shadow.pk)))
        finally:
            connection.close()

    threads = [threading.Thread(target=show) for _ in range(2)]
    for thread in threads:
        thread.start()
    # Both have read the version, so the second is at the lock or past it.
    assert versions_read.acquire(timeout=60)
    assert versions_read.acquire(timeout=60)
    release.set()
    for thread in threads:
        thread.join(60)

    assert computations == [shadow.pk]
    assert len(shown) == 2
    assert shown[0] is shown[1]
