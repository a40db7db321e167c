import time
import uuid

import pytest
from django.core.cache import cache

from deployer import task_names
from tasks import app
from testsupport.services import CeleryWorker


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_real_worker_runs_a_task_sent_through_redis(celery_worker: CeleryWorker) -> None:
    nonce = uuid.uuid4().hex
    app.send_task(task_names.WORKER_SELFCHECK, args=[nonce])

    deadline = time.monotonic() + 20
    while (answer := cache.get(f"selfcheck:{nonce}")) is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert answer is not None, "the worker did not run the task"
    assert answer["database"] is True
    assert answer["hostname"].startswith("test-worker-")
