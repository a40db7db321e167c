"""Copies of live requests to an endpoint's shadow, sent off the callers' path.

The gateway answers the caller first; then ``shadow_copy_offer`` decides (the shadow's
sample percent) whether this request is copied and puts it on a bounded in-process queue
without waiting. ``SENDERS`` threads per web process send each copy to the shadow's
runtime, pair the two answers and store the pairs in batches (``ShadowPair``), so a slow
or failing shadow costs callers nothing: a full queue drops the copy and counts it.

A hung shadow holds a sender for the deadline its runtime facts give (``timeout``, the
local target's 5 s) instead of the live route's minute, and a copy that waited longer than
``queue_seconds`` for a sender is dropped (counted) rather than sent late: copies stay
recent, and a shadow's end only waits that long for those in flight. A shadow has one
copy in flight per process at most (``MAX_IN_FLIGHT_PER_SHADOW``), and a sender takes the
oldest copy of a shadow with none: a slow shadow holds one sender while the other serves
the installation's other shadows, whose copies would otherwise wait out its deadlines.

Each sender has its own database connection (Django's are per thread): closed after an
error so the next batch reconnects (a database restart loses the batch, not the
sender), and re-made after a fork (a queue made before gunicorn forked its workers has
no sender there, so each process makes its own). Copies still queued when the process
exits are lost (they are samples).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import DatabaseError, close_old_connections, connection
from django.db.models import F

from deployer.models import Shadow, ShadowPair
from deployer.shadow_answers import KeptAnswer, answer_kept, shadow_pairs_insert
from deployer.targets import get_target
from deployer.targets.base import InvocationResult, RuntimeUnavailable

logger = logging.getLogger(__name__)

# A batch of pairs is stored when it has this many, or when its first is this old.
FLUSH_PAIRS = 100
FLUSH_SECONDS = 1.0
# A shadow's pairs are trimmed once this process stored this share of SHADOW_MAX_PAIRS
# since the last trim: finding the cutoff reads that many index entries, too many to read
# with every batch.
TRIM_SHARE = 0.1
# Kept of a shadow's error answer.
MAX_ERROR_CHARS = 500
SENDERS = 2
SENDER_NICE = 19
# Request and answer bytes queued per process at most (besides SHADOW_QUEUE_SIZE copies):
# answers may be megabytes each.
MAX_QUEUED_BYTES = 64 * 1024 * 1024
# A copy's deadlines when the runtime facts give none.
DEFAULT_TIMEOUT = 5.0
DEFAULT_QUEUE_SECONDS = 2.0
# Copies of one shadow sent at once per process: more would let a slow or hung shadow hold
# every sender for its deadline, and every other shadow's copies would wait past their
# queue_seconds and be dropped (red-team finding F5).
MAX_IN_FLIGHT_PER_SHADOW = 1


@dataclass(frozen=True)
class _Copy:
    shadow_id: int
    target: str
    runtime: Mapping[str, Any]
    body: bytes
    headers: Mapping[str, str]
    live_status: int
    live_body: bytes
    live_ms: float
    queued_at: float

    @property
    def size(self) -> int:
        return len(self.body) + len(self.live_body)

    def stale(self, now: float) -> bool:
        """Waited longer than its shadow's ``queue_seconds`` for a sender."""
        return now - self.queued_at > float(self.runtime.get("queue_seconds", DEFAULT_QUEUE_SECONDS))


class _Queue:
    """Copies queued per shadow, oldest first, bounded in count and bytes; senders take
    the oldest copy of a shadow with fewer than ``MAX_IN_FLIGHT_PER_SHADOW`` in flight."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.changed = threading.Condition(threading.Lock())
        self.waiting: dict[int, deque[_Copy]] = {}
        self.in_flight: dict[int, int] = {}
        self.count = 0
        self.bytes = 0

    def put(self, copy: _Copy) -> bool:
        """Queued, unless the queue is full; never waits for a sender."""
        with self.changed:
            if self.count >= self.size or self.bytes + copy.size > MAX_QUEUED_BYTES:
                return False
            self.waiting.setdefault(copy.shadow_id, deque()).append(copy)
            self.count += 1
            self.bytes += copy.size
            self.changed.notify()
        return True

    def take(self, timeout: float | None) -> tuple[_Copy | None, bool]:
        """The oldest copy a sender may send now (in flight until ``done``), or None after
        timeout or as soon as stale copies were dropped (so their counts get stored); and
        whether any were."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.changed:
            while True:
                copy, dropped = self._next()
                remaining = None if deadline is None else deadline - time.monotonic()
                if copy is not None or dropped or (remaining is not None and remaining <= 0):
                    return copy, dropped
                self.changed.wait(remaining)

    def _next(self) -> tuple[_Copy | None, bool]:
        now = time.monotonic()
        oldest: deque[_Copy] | None = None
        dropped = False
        for shadow_id, copies in list(self.waiting.items()):
            # Oldest first: the stale ones lead.
            while copies and copies[0].stale(now):
                self._remove(copies.popleft())
                _drop(shadow_id)
                dropped = True
            if not copies:
                del self.waiting[shadow_id]
                continue
            if self.in_flight.get(shadow_id, 0) < MAX_IN_FLIGHT_PER_SHADOW and (
                oldest is None or copies[0].queued_at < oldest[0].queued_at
            ):
                oldest = copies
        if oldest is None:
            return None, dropped
        copy = oldest.popleft()
        self._remove(copy)
        if not oldest:
            del self.waiting[copy.shadow_id]
        self.in_flight[copy.shadow_id] = self.in_flight.get(copy.shadow_id, 0) + 1
        return copy, dropped

    def _remove(self, copy: _Copy) -> None:
        self.count -= 1
        self.bytes -= copy.size

    def done(self, copy: _Copy) -> None:
        """The copy's send ended: its shadow's next copy may go."""
        with self.changed:
            if self.in_flight[copy.shadow_id] == 1:
                del self.in_flight[copy.shadow_id]
            else:
                self.in_flight[copy.shadow_id] -= 1
            self.changed.notify()

    def empty(self) -> bool:
        with self.changed:
            return self.count == 0


_queue: _Queue | None = None
# The process that made _queue and its senders: a forked child makes its own.
_queue_pid = 0
_queue_lock = threading.Lock()
# Dropped copies per shadow since the last flush (added to Shadow.copies_dropped there).
_dropped: dict[int, int] = {}
# Pairs this process stored per shadow since it last trimmed that shadow's.
_stored_since_trim: dict[int, int] = {}


def _copies() -> _Queue:
    """This process's queue, with its sender threads started on first use."""
    global _queue, _queue_pid
    if _queue is None or _queue_pid != os.getpid():
        with _queue_lock:
            if _queue is None or _queue_pid != os.getpid():
                made = _Queue(settings.SHADOW_QUEUE_SIZE)
                for number in range(SENDERS):
                    threading.Thread(
                        target=_send_forever, args=(made,), name=f"shadow-copies-{number}", daemon=True
                    ).start()
                _queue, _queue_pid = made, os.getpid()
                _dropped.clear()
    return _queue


def _drop(shadow_id: int) -> None:
    with _queue_lock:
        _dropped[shadow_id] = _dropped.get(shadow_id, 0) + 1


def shadow_copy_offer(
    *,
    target: str,
    shadow: Mapping[str, Any],
    body: bytes,
    headers: Mapping[str, str],
    live: InvocationResult,
    live_ms: float,
) -> None:
    """After the caller's answer: queue a copy for the shadow (``Endpoint.shadow_runtime``)
    if this request is in its sample; never blocks, never raises to the caller."""
    runtime = shadow.get("runtime")
    # Sampling only: nothing secret depends on the generator (hence the S311 waiver).
    if not runtime or random.uniform(0, 100) >= float(shadow.get("sample_percent", 0)):  # noqa: S311
        return
    copy = _Copy(
        shadow_id=int(shadow["shadow_id"]),
        target=target,
        runtime=runtime,
        body=body,
        headers=dict(headers),
        live_status=live.status,
        live_body=live.body,
        live_ms=live_ms,
        queued_at=time.monotonic(),
    )
    if not _copies().put(copy):
        _drop(copy.shadow_id)


def _pair(copy: _Copy) -> ShadowPair:
    """Send the copy and pair the answers."""
    started = time.perf_counter()
    try:
        runtime = {"timeout": DEFAULT_TIMEOUT, **copy.runtime}
        answer: InvocationResult | None = get_target(copy.target).invoke(runtime, copy.body, copy.headers)
        error = ""
    except RuntimeUnavailable as exc:
        answer, error = None, f"The shadow did not answer: {exc}"
    except Exception as exc:  # a copy must never stop the sender
        logger.exception("shadow %s: sending a copy failed", copy.shadow_id)
        answer, error = None, f"Sending the copy failed: {type(exc).__name__}"
    shadow_ms = (time.perf_counter() - started) * 1000
    live = answer_kept(copy.live_body) if copy.live_status == 200 else KeptAnswer(None)
    shadow = KeptAnswer(None)
    if answer is not None and answer.status != 200:
        # NUL too: PostgreSQL's text refuses it.
        error = answer.body.decode("utf-8", "replace").replace("\x00", "")[:MAX_ERROR_CHARS]
    elif answer is not None:
        shadow = answer_kept(answer.body)
    # An answer kept as nothing for a reason is not compared: the reason shows with the errors.
    error = error or shadow.reason or (live.reason and f"Live: {live.reason}")
    return ShadowPair(
        shadow_id=copy.shadow_id,
        live_status=copy.live_status,
        shadow_status=answer.status if answer is not None else None,
        live_ms=copy.live_ms,
        shadow_ms=shadow_ms if answer is not None else None,
        live_output=live.output,
        shadow_output=shadow.output,
        shadow_error=error,
    )


def _send_forever(copies: _Queue) -> None:
    # Linux schedules threads on their own: the copies get the CPU only when the process's
    # request threads leave it.
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), SENDER_NICE)
    batch: list[ShadowPair] = []
    # When the pairs (and dropped counts) gathered since the last store are stored.
    flush_at: float | None = None
    while True:
        timeout = None if flush_at is None else max(0.0, flush_at - time.monotonic())
        copy, dropped = copies.take(timeout)
        try:
            if copy is not None:
                try:
                    batch.append(_pair(copy))
                finally:
                    copies.done(copy)
            if flush_at is None and (copy is not None or dropped):
                flush_at = time.monotonic() + FLUSH_SECONDS
            if flush_at is not None and (len(batch) >= FLUSH_PAIRS or time.monotonic() >= flush_at):
                shadow_pairs_store(batch)
                batch, flush_at = [], None
                if copies.empty():
                    # Idle: no connection held for nothing (and none left on the database).
                    connection.close()
        except Exception:  # nothing may end a sender: its process would copy no more
            logger.exception("the shadow copy sender failed; %d pairs lost", len(batch))
            batch, flush_at = [], None


def shadow_pairs_store(pairs: list[ShadowPair]) -> None:
    """Store pairs (and this process's dropped counts); trim a shadow's pairs to
    ``SHADOW_MAX_PAIRS`` after each ``TRIM_SHARE`` of that this process stored (between
    trims a shadow keeps at most that share more per sender). A database that does not
    answer loses the batch, not the sender."""
    with _queue_lock:
        dropped = dict(_dropped)
        _dropped.clear()
    sent: dict[int, int] = {}
    for pair in pairs:
        sent[pair.shadow_id] = sent.get(pair.shadow_id, 0) + 1
    try:
        close_old_connections()
        # Counted first: a shadow whose row is gone (its endpoint deleted meanwhile) counts
        # nothing and gets no pairs.
        wanted = {
            shadow_id
            for shadow_id in {*sent, *dropped}
            if Shadow.objects.filter(pk=shadow_id).update(
                copies_sent=F("copies_sent") + sent.get(shadow_id, 0),
                copies_dropped=F("copies_dropped") + dropped.get(shadow_id, 0),
            )
        }
        shadow_pairs_insert([pair for pair in pairs if pair.shadow_id in wanted])
        for shadow_id in wanted & set(sent):
            _trim(shadow_id, sent[shadow_id])
    except DatabaseError:
        logger.exception("storing %d shadow pairs failed; they are lost", len(pairs))
        # A connection a database restart cut: the next batch opens a new one.
        connection.close()


def _trim(shadow_id: int, stored: int) -> None:
    keep = settings.SHADOW_MAX_PAIRS
    with _queue_lock:
        since = _stored_since_trim.get(shadow_id, 0) + stored
        due = since >= keep * TRIM_SHARE
        _stored_since_trim[shadow_id] = 0 if due else since
    if not due:
        return
    oldest_kept = (
        ShadowPair.objects.filter(shadow_id=shadow_id).order_by("-id").values_list("id", flat=True)[keep - 1 : keep]
    )
    if cutoff := list(oldest_kept):
        ShadowPair.objects.filter(shadow_id=shadow_id, id__lt=cutoff[0]).delete()
