"""How a shadow answered compared with the live version, computed from its stored pairs.

A pure read: ``shadow_comparison`` streams the shadow's ``ShadowPair`` rows once (a few
thousand, each at most ``SHADOW_MAX_ROWS`` rows of predictions) and adds up

- the requests: pairs whose live answer was not 200 are left out and counted (the request
  itself was refused, so there is nothing to compare); of the rest, those the shadow did
  not answer with 200 are its errors, grouped by message, and so are those whose answers
  were not kept (too large, or not strict JSON: deployer/shadow_answers.py) with the reason;
- the rows of the requests both answered, row by row (the n-th prediction of one with the
  n-th of the other). What is compared depends on what the live version predicts:
  ``class`` (labels: strings, R's logicals as TRUE/FALSE, NA) gives the agreement rate and
  a confusion table; ``numeric`` the mean and maximum absolute difference and a histogram
  of the differences (shadow minus live); ``probabilities`` (one object of named numbers
  per row) compares the most probable labels as ``class`` does, plus the maximum absolute
  difference of any probability; anything else (``other``) exact agreement. A row one
  answer lacks, or whose values are not of that kind, is "unmatched": it never agrees and
  has no difference;
- both versions' latency (p50 and p99, nearest rank) over every pair that measured one
  (the live version's refusals were answered too, so they count).

The kind is the one most of the live rows have, so one odd answer does not change it.
The REST API and the dashboard show the same figures (deployer/api/endpoints.py,
webui/templates/webui/_shadow.html), through ``shadow_comparison_shown``: a full shadow is
up to 5,000 pairs of 2 x 64 KiB, so each web process computes a shadow's comparison once
per change of its pairs, one request at a time, and reuses a slow one for a while (a
dashboard polling every 5 s must not keep a process parsing answers).
"""

from __future__ import annotations

import bisect
import math
import operator
import threading
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from itertools import zip_longest
from typing import Any

from django.db.models import Count, Max, Sum

from deployer.models import Endpoint, Shadow, ShadowPair

CLASS = "class"
NUMERIC = "numeric"
PROBABILITIES = "probabilities"
OTHER = "other"

# The confusion table's axes: the labels either version answered most often (the others
# are added up in one last row and column).
CONFUSION_LABELS = 10
HISTOGRAM_BINS = 10
TOP_ERRORS = 10
# Pairs read from the database per round trip: a pair may hold 2 x 64 KiB of JSON, and
# its numbers take several times that once parsed.
CHUNK = 50
# A label longer than this is compared and shown by its start (an answer may be any text).
MAX_LABEL_CHARS = 200

# Comparisons kept per web process, the least recently shown dropped first.
MEMO_SHADOWS = 64
# A comparison that took at least this long is shown again for twice its time, even when
# pairs arrived meanwhile: at most a third of a process's time goes to one shadow.
MEMO_SLOW_SECONDS = 0.25

# A row that one of the two answers does not have.
_MISSING = object()
# Rows made only of these are counted in a hash table: str hashes are salted per process
# and the others have a handful of values. Numbers are not: every multiple of 2**61 - 1
# hashes alike, so a shadow answering those made each count walk every earlier one
# (400 pairs took 54 s).
_HASH_SAFE_TYPES = frozenset({str, bool, type(None)})


@dataclass(frozen=True)
class ConfusionTable:
    """``counts[i][j]``: rows the live version labelled ``labels[i]`` and the shadow
    ``labels[j]``. Labels are sorted; when ``others``, a last row and column count every
    label beyond the ``CONFUSION_LABELS`` most frequent."""

    labels: tuple[str, ...]
    others: bool
    counts: tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class Histogram:
    """``counts[i]``: differences in [edges[i], edges[i + 1]) (the last bin includes its end)."""

    edges: tuple[float, ...]
    counts: tuple[int, ...]


@dataclass(frozen=True)
class ErrorCount:
    message: str
    count: int


@dataclass(frozen=True)
class Latency:
    """Milliseconds; None without a measurement."""

    p50: float | None
    p99: float | None


@dataclass(frozen=True)
class ShadowComparison:
    # CLASS, NUMERIC, PROBABILITIES or OTHER; "" until a row was compared.
    kind: str
    # Pairs stored (the oldest are removed beyond SHADOW_MAX_PAIRS) whose live answer was 200.
    requests: int
    # Pairs left out because the live answer was not 200.
    live_failed: int
    # Requests both versions answered with 200, and their rows.
    compared_requests: int
    rows_compared: int
    rows_unmatched: int
    # From the Shadow row: every copy sent, and those dropped because the senders were behind.
    copies_sent: int
    copies_dropped: int
    # class, probabilities, other: rows with the same answer (label), and their share.
    agreed: int | None
    agreement_rate: float | None
    confusion: ConfusionTable | None
    # numeric: of the predictions; probabilities: max only, of any class's probability.
    mean_abs_difference: float | None
    max_abs_difference: float | None
    histogram: Histogram | None
    # Requests the shadow did not answer with 200, of ``requests``.
    shadow_errors: int
    error_rate: float | None
    top_errors: tuple[ErrorCount, ...]
    live_latency: Latency
    shadow_latency: Latency


def shadow_latest(endpoint: Endpoint) -> Shadow | None:
    """The endpoint's active shadow, else its latest one; None if it never had one."""
    shadows = Shadow.objects.filter(endpoint=endpoint).select_related("model_version", "deployment")
    return shadows.filter(status__in=Shadow.ACTIVE).first() or shadows.first()


def _label(value: Any) -> str | None:
    """A class label as R names it, or None if ``value`` is not one."""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if value is None:
        return "NA"
    return value[:MAX_LABEL_CHARS] if isinstance(value, str) else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int no float holds
        return None
    return number if math.isfinite(number) else None


def _probabilities(value: Any) -> dict[str, float] | None:
    if not isinstance(value, dict) or not value:
        return None
    numbers = {str(key): _number(item) for key, item in value.items()}
    if any(number is None for number in numbers.values()):
        return None
    return numbers  # type: ignore[return-value]  # no None left


def _argmax(probabilities: dict[str, float]) -> str:
    # Ties go to the first label in sorted order, the same for both versions.
    return max(sorted(probabilities), key=lambda label: probabilities[label])


def _rows(output: Any) -> list[Any]:
    return output if isinstance(output, list) else [output]


class _Tally:
    """Every kind's figures for every row, until the kind is known (at the end).

    Fast for the two common shapes, without a Python step per row: rows that are all
    numbers with a decimal point give their differences in one C-level ``map``; rows of
    labels (strings, logicals, NA) are counted per distinct (live, shadow) pair at C speed,
    and each distinct pair is looked at once, weighted by its count (a classifier's 500,000
    rows are a few dozen pairs). Any other row is looked at on its own."""

    def __init__(self) -> None:
        self.values: Counter[tuple[Any, Any]] = Counter()
        self.kinds: Counter[str] = Counter()
        self.rows = 0
        self.missing = 0
        self.equal = 0
        self.labels: Counter[tuple[str, str]] = Counter()
        self.differences: list[float] = []  # shadow - live
        self.argmax: Counter[tuple[str, str]] = Counter()
        self.probability_max = 0.0

    def add_request(self, live_output: Any, shadow_output: Any) -> None:
        live_rows, shadow_rows = _rows(live_output), _rows(shadow_output)
        if len(live_rows) == len(shadow_rows) and {*map(type, live_rows), *map(type, shadow_rows)} == {float}:
            differences = list(map(operator.sub, shadow_rows, live_rows))
            if all(map(math.isfinite, differences)):
                self.rows += len(differences)
                self.kinds[NUMERIC] += len(differences)
                self.equal += differences.count(0.0)
                self.differences += differences
                return
        rows = zip_longest(live_rows, shadow_rows, fillvalue=_MISSING)
        if {*map(type, live_rows), *map(type, shadow_rows)} <= _HASH_SAFE_TYPES:
            self.values.update(rows)
        else:
            for live, shadow in rows:
                self.add(live, shadow, 1)

    def finish(self) -> None:
        for (live, shadow), count in self.values.items():
            self.add(live, shadow, count)
        self.values.clear()

    def add(self, live: Any, shadow: Any, count: int) -> None:
        self.rows += count
        if live is _MISSING or shadow is _MISSING:
            self.missing += count
            return
        if live == shadow:
            self.equal += count
        # What the live value is decides what it is compared as; it is only ever one of these.
        if (live_number := _number(live)) is not None:
            self.kinds[NUMERIC] += count
            shadow_number = _number(shadow)
            # Two huge numbers of opposite signs differ by more than a float holds: unmatched.
            if shadow_number is not None and math.isfinite(difference := shadow_number - live_number):
                self.differences += [difference] * count
            return
        if (live_label := _label(live)) is not None:
            if live is not None:  # NA says nothing about the kind
                self.kinds[CLASS] += count
            if (shadow_label := _label(shadow)) is not None:
                self.labels[live_label, shadow_label] += count
            return
        if (live_probabilities := _probabilities(live)) is None:
            self.kinds[OTHER] += count
            return
        self.kinds[PROBABILITIES] += count
        if (shadow_probabilities := _probabilities(shadow)) is not None:
            self.argmax[_argmax(live_probabilities), _argmax(shadow_probabilities)] += count
            for label in live_probabilities.keys() | shadow_probabilities.keys():
                difference = abs(live_probabilities.get(label, 0.0) - shadow_probabilities.get(label, 0.0))
                if math.isfinite(difference):  # huge "probabilities" of opposite signs: left out
                    self.probability_max = max(self.probability_max, difference)

    def kind(self) -> str:
        if not self.rows:
            return ""
        # The most common; ties in a fixed order.
        order = (CLASS, PROBABILITIES, NUMERIC, OTHER)
        return max(order, key=lambda kind: (self.kinds[kind], -order.index(kind))) if self.kinds else OTHER


def _confusion(labels: Counter[tuple[str, str]]) -> ConfusionTable:
    frequency: Counter[str] = Counter()
    for (live, shadow), count in labels.items():
        frequency[live] += count
        frequency[shadow] += count
    top = sorted(sorted(frequency, key=lambda label: (-frequency[label], label))[:CONFUSION_LABELS])
    index = {label: position for position, label in enumerate(top)}
    others = len(frequency) > len(top)
    size = len(top) + others
    counts = [[0] * size for _ in range(size)]
    for (live, shadow), count in labels.items():
        counts[index.get(live, size - 1)][index.get(shadow, size - 1)] += count
    return ConfusionTable(labels=tuple(top), others=others, counts=tuple(tuple(row) for row in counts))


def _histogram(differences: list[float]) -> Histogram:
    """Bins [edge, next edge), the last one closed; counted by bisecting the sorted
    differences at each edge (C speed, and exactly the edges shown)."""
    ordered = sorted(differences)
    low, high = ordered[0], ordered[-1]
    if low == high:  # all the same: bins of 0.1 from 0.5 below it to 0.5 above
        low, high = low - HISTOGRAM_BINS / 20, high + HISTOGRAM_BINS / 20
    if math.isfinite(width := (high - low) / HISTOGRAM_BINS):
        edges = (*(low + width * position for position in range(HISTOGRAM_BINS)), high)
    else:  # a range wider than a float holds: weighted so that no term is wider
        edges = (
            *(
                low * (1 - position / HISTOGRAM_BINS) + high * (position / HISTOGRAM_BINS)
                for position in range(HISTOGRAM_BINS)
            ),
            high,
        )
    starts = [bisect.bisect_left(ordered, edge) for edge in edges[:-1]]
    ends = [*starts[1:], len(ordered)]
    return Histogram(edges=edges, counts=tuple(end - start for start, end in zip(starts, ends, strict=True)))


def _percentile(values: list[float], percent: int) -> float | None:
    """Nearest rank: the smallest value with at least ``percent`` % of them at or below it."""
    if not values:
        return None
    return values[max(math.ceil(percent / 100 * len(values)), 1) - 1]


def _latency(values: list[float]) -> Latency:
    values.sort()
    return Latency(p50=_percentile(values, 50), p99=_percentile(values, 99))


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def shadow_comparison(shadow: Shadow) -> ShadowComparison:
    """The comparison of ``shadow``'s stored pairs (see the module's docstring)."""
    tally = _Tally()
    requests = live_failed = compared_requests = 0
    errors: Counter[str] = Counter()
    live_ms: list[float] = []
    shadow_ms: list[float] = []
    pairs = ShadowPair.objects.filter(shadow=shadow).values_list(
        "live_status", "shadow_status", "live_ms", "shadow_ms", "live_output", "shadow_output", "shadow_error"
    )
    for live_status, shadow_status, live_time, shadow_time, live_output, shadow_output, error in pairs.iterator(
        chunk_size=CHUNK
    ):
        if live_time is not None:
            live_ms.append(live_time)
        if shadow_time is not None:
            shadow_ms.append(shadow_time)
        if live_status != 200:
            live_failed += 1
            continue
        requests += 1
        if shadow_status != 200 or error:
            errors[error.strip() or (f"HTTP {shadow_status}" if shadow_status else "No answer")] += 1
            continue
        compared_requests += 1
        tally.add_request(live_output, shadow_output)

    tally.finish()
    kind = tally.kind()
    agreed: int | None = None
    confusion = histogram = None
    mean_abs = max_abs = None
    matched = tally.rows
    if kind == CLASS:
        matched = sum(tally.labels.values())
        agreed = sum(count for (live, answer), count in tally.labels.items() if live == answer)
        confusion = _confusion(tally.labels)
    elif kind == PROBABILITIES:
        matched = sum(tally.argmax.values())
        agreed = sum(count for (live, answer), count in tally.argmax.items() if live == answer)
        confusion = _confusion(tally.argmax)
        max_abs = tally.probability_max if matched else None
    elif kind == NUMERIC:
        matched = len(tally.differences)
        if matched:
            mean_abs = sum(map(abs, tally.differences)) / matched
            if not math.isfinite(mean_abs):  # the sum went beyond a float: each share first
                mean_abs = math.fsum(abs(difference) / matched for difference in tally.differences)
            max_abs = max(map(abs, tally.differences))
            histogram = _histogram(tally.differences)
    elif kind == OTHER:
        agreed = tally.equal
        matched = tally.rows - tally.missing
    shadow_errors = sum(errors.values())
    return ShadowComparison(
        kind=kind,
        requests=requests,
        live_failed=live_failed,
        compared_requests=compared_requests,
        rows_compared=tally.rows,
        rows_unmatched=tally.rows - matched,
        copies_sent=shadow.copies_sent,
        copies_dropped=shadow.copies_dropped,
        agreed=agreed,
        agreement_rate=_rate(agreed, tally.rows) if agreed is not None else None,
        confusion=confusion,
        mean_abs_difference=mean_abs,
        max_abs_difference=max_abs,
        histogram=histogram,
        shadow_errors=shadow_errors,
        error_rate=_rate(shadow_errors, requests),
        top_errors=tuple(
            ErrorCount(message, count)
            for message, count in sorted(errors.items(), key=lambda item: (-item[1], item[0]))[:TOP_ERRORS]
        ),
        live_latency=_latency(live_ms),
        shadow_latency=_latency(shadow_ms),
    )


@dataclass(frozen=True)
class _Memo:
    version: tuple[Any, ...]
    comparison: ShadowComparison
    computed_at: float
    seconds: float


_memos: OrderedDict[int, _Memo] = OrderedDict()
# One computation per shadow at a time in a process: the others wait for its result.
_computing: dict[int, threading.Lock] = {}
_memos_lock = threading.Lock()
_clock = time.monotonic


def _pairs_version(shadow: Shadow) -> tuple[Any, ...]:
    """Changes whenever the comparison can: a pair stored or removed, a copy counted, the
    status; and with the shadow (SQLite gives a deleted row's id to the next one)."""
    # The sum of ids too: two processes' inserts committed out of order, then trimmed, can
    # leave the newest id and the count as they were with one pair replaced.
    pairs = ShadowPair.objects.filter(shadow=shadow).aggregate(newest=Max("id"), count=Count("id"), ids=Sum("id"))
    counts = (shadow.copies_sent, shadow.copies_dropped, pairs["newest"], pairs["count"], pairs["ids"])
    return (shadow.created_at, shadow.status, *counts)


def shadow_comparison_shown(shadow: Shadow) -> ShadowComparison:
    """``shadow_comparison`` as the dashboard and the REST API show it: the last one this
    process computed while the shadow's pairs are unchanged, or while a slow one is younger
    than twice its computing time."""
    version = _pairs_version(shadow)
    with _memos_lock:
        computing = _computing.setdefault(shadow.pk, threading.Lock())
    with computing:
        memo = _memos.get(shadow.pk)
        if memo is not None and (
            memo.version == version
            or (memo.seconds >= MEMO_SLOW_SECONDS and _clock() - memo.computed_at < 2 * memo.seconds)
        ):
            with _memos_lock:
                _memos.move_to_end(shadow.pk)
            return memo.comparison
        started = _clock()
        try:
            comparison = shadow_comparison(shadow)
        except BaseException:
            with _memos_lock:  # no memo will drop its lock: not kept for a shadow that fails
                if shadow.pk not in _memos:
                    _computing.pop(shadow.pk, None)
            raise
        finished = _clock()
        with _memos_lock:
            _memos[shadow.pk] = _Memo(version, comparison, finished, finished - started)
            _memos.move_to_end(shadow.pk)
            while len(_memos) > MEMO_SHADOWS:
                dropped, _ = _memos.popitem(last=False)
                _computing.pop(dropped, None)
        return comparison
