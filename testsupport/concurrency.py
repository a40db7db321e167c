"""Races for tests: N callables released together, every answer and every exception kept.

A thread that raises does not just warn (as an exception in a plain ``threading.Thread``
does): ``race`` re-raises the first one after all threads end, so a dead client fails the
test. A barrier alone releases the clients within a millisecond or so, but each request
then spends a few milliseconds in gunicorn, authentication and the view before the few
statements that race, so most runs would not overlap there. ``race(gate=...)`` lines them
up at the database instead: the test holds an ACCESS EXCLUSIVE lock on a table (PostgreSQL
only), every request blocks at its first read of it, and the lock is released once
``waiters`` sessions wait, so they all run the next statements together.
``queued_task_args`` reads what services enqueued from a Redis broker no worker watches.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import redis
from django.conf import settings
from django.db import connection, transaction

T = TypeVar("T")

# A client thread that waits longer than this at the barrier or for its answer is hung.
THREAD_TIMEOUT = 120.0
# A gate opens after this long even if fewer sessions wait (gunicorn may have given two
# requests to one worker): the race then overlaps less, it does not hang.
GATE_TIMEOUT = 15.0


class RaceFailed(AssertionError):
    """A client thread raised (or hung): the race proves nothing about the others."""


@dataclass(frozen=True)
class RaceResult:
    results: list[Any]

    @property
    def statuses(self) -> Counter[int]:
        """HTTP statuses of the answers, counted (the results must have ``status_code``)."""
        return Counter(result.status_code for result in self.results)


@dataclass(frozen=True)
class Gate:
    """Hold ``table`` until ``waiters`` database sessions wait for a lock (see the module)."""

    table: str
    waiters: int


@contextmanager
def _held(gate: Gate | None) -> Iterator[Callable[[list[threading.Thread]], None]]:
    """Locks the gate's table until the block ends; yields wait(threads), which returns once
    enough sessions wait, every thread has ended, or GATE_TIMEOUT has passed."""
    if gate is None:
        yield lambda threads: None
        return
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f'LOCK TABLE "{gate.table}" IN ACCESS EXCLUSIVE MODE')

        def wait(threads: list[threading.Thread]) -> None:
            deadline = time.monotonic() + GATE_TIMEOUT
            while time.monotonic() < deadline and any(thread.is_alive() for thread in threads):
                cursor.execute("SELECT pg_stat_clear_snapshot()")
                cursor.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
                )
                if cursor.fetchone()[0] >= gate.waiters:
                    return
                time.sleep(0.01)

        yield wait


def race(calls: Sequence[Callable[[], T]], *, gate: Gate | None = None) -> RaceResult:
    """Run each call in its own thread, all released at once by a barrier (and by ``gate``
    at the database, when given); their results in order. Raises RaceFailed if any thread
    raised or did not finish."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)
    errors: list[tuple[int, BaseException]] = []
    lock = threading.Lock()

    def run(index: int, call: Callable[[], T]) -> None:
        try:
            barrier.wait(timeout=THREAD_TIMEOUT)
            results[index] = call()
        except BaseException as exc:  # collected and re-raised in the test's thread
            with lock:
                errors.append((index, exc))

    threads = [threading.Thread(target=run, args=(i, call), daemon=True) for i, call in enumerate(calls)]
    with _held(gate) as wait:
        for thread in threads:
            thread.start()
        wait(threads)
    for thread in threads:
        thread.join(THREAD_TIMEOUT)
    hung = [i for i, thread in enumerate(threads) if thread.is_alive()]
    if hung:
        raise RaceFailed(f"client threads {hung} did not finish within {THREAD_TIMEOUT} s")
    if errors:
        index, first = errors[0]
        raise RaceFailed(f"{len(errors)} client thread(s) raised; thread {index}: {first!r}") from first
    return RaceResult(results)


def queue_clear(broker_url: str) -> None:
    """Forget every queued task message of the broker at ``broker_url`` (none runs without a worker)."""
    redis.Redis.from_url(broker_url).delete(settings.CELERY_TASK_DEFAULT_QUEUE)


def queued_task_args(broker_url: str, task_name: str) -> list[list[Any]]:
    """The positional arguments of every queued message of ``task_name`` (Celery's message
    protocol 2: the body is base64 JSON ``[args, kwargs, embed]``)."""
    found = []
    for raw in redis.Redis.from_url(broker_url).lrange(settings.CELERY_TASK_DEFAULT_QUEUE, 0, -1):
        message = json.loads(raw)
        if message["headers"]["task"] == task_name:
            args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
            found.append(args)
    return found
