"""Copies of live requests to an endpoint's shadow, sent off the callers' path.

The gateway answers the caller first; then ``shadow_copy_offer`` decides (the shadow's
sample percent) whether this request is copied and puts it on a bounded in-process queue
without waiting. ``SENDERS`` threads per web process send each copy to the shadow's
runtime, pair the two answers and store the pairs in batches (``ShadowPair``), so a slow
or failing shadow costs callers nothing: a full queue drops the copy and counts it.

A hung shadow holds a sender for the deadline its runtime facts give (``timeout``, the
local target's 5 s) instead of the live route's minute, and a copy that waited longer than
``queue_seconds`` for a sender is dropped (counted) rather than sent late: copies stay
recent, and a shadow's end only waits that long for those in flight. Two senders, so one
copy waiting on that deadline does not stop the others.

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
import queue
import random
import threading
import time
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


_queue: queue.Queue[_Copy] | None = None
# The process that made _queue and its senders: a forked child makes its own.
_queue_pid = 0
_queue_lock = threading.Lock()
_queued_bytes = 0
# Dropped copies per shadow since the last flush (added to Shadow.copies_dropped there).
_dropped: dict[int, int] = {}
# Pairs this process stored per shadow since it last trimmed that shadow's.
_stored_since_trim: dict[int, int] = {}


def _copies() -> queue.Queue[_Copy]:
    """This process's queue, with its sender threads started on first use."""
    global _queue, _queue_pid, _queued_bytes
    if _queue is None or _queue_pid != os.getpid():
        with _queue_lock:
            if _queue is None or _queue_pid != os.getpid():
                made: queue.Queue[_Copy] = queue.Queue(maxsize=settings.SHADOW_QUEUE_SIZE)
                for number in range(SENDERS):
                    threading.Thread(
                        target=_send_forever, args=(made,), name=f"shadow-copies-{number}", daemon=True
                    ).start()
                _queue, _queue_pid, _queued_bytes = made, os.getpid(), 0
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
    global _queued_bytes
    copies = _copies()
    with _queue_lock:
        fits = _queued_bytes + copy.size <= MAX_QUEUED_BYTES
        if fits:
            _queued_bytes += copy.size
    if not fits:
        _drop(copy.shadow_id)
        return
    try:
        copies.put_nowait(copy)
    except queue.Full:
        with _queue_lock:
            _queued_bytes -= copy.size
        _drop(copy.shadow_id)


def _pair(copy: _Copy) -> ShadowPair | None:
    """Send the copy and pair the answers; None (and counted as dropped) when it waited too
    long for a sender."""
    if time.monotonic() - copy.queued_at > float(copy.runtime.get("queue_seconds", DEFAULT_QUEUE_SECONDS)):
        _drop(copy.shadow_id)
        return None
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


def _send_forever(copies: queue.Queue[_Copy]) -> None:
    global _queued_bytes
    # Linux schedules threads on their own: the copies get the CPU only when the process's
    # request threads leave it.
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), SENDER_NICE)
    batch: list[ShadowPair] = []
    # When the pairs (and dropped counts) gathered since the last store are stored.
    flush_at: float | None = None
    while True:
        timeout = None if flush_at is None else max(0.0, flush_at - time.monotonic())
        try:
            copy = copies.get(timeout=timeout)
        except queue.Empty:
            copy = None
        try:
            if copy is not None:
                with _queue_lock:
                    _queued_bytes -= copy.size
                if (pair := _pair(copy)) is not None:
                    batch.append(pair)
                if flush_at is None:
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
