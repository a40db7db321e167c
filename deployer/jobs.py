"""The one door from the domain to background work.

Services enqueue by task *name* after the transaction commits: a worker never sees an
uncommitted row, and `deployer` never imports `tasks` (no import cycle).
"""

from __future__ import annotations

from typing import Any

from celery import current_app
from django.db import transaction


def enqueue(task_name: str, *args: Any, countdown: float | None = None) -> None:
    def send() -> None:
        current_app.send_task(task_name, args=list(args), countdown=countdown)

    transaction.on_commit(send)
