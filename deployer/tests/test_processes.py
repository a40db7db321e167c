import os
import time
from pathlib import Path

import pytest

from deployer.integrations import processes


def test_a_detached_command_inherits_no_secrets_from_the_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DJANGO_SECRET_KEY", "worker-secret-value")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret-value")
    log = tmp_path / "output.log"

    started = processes.start(
        identifier="test-env-scrub",
        command=["sh", "-c", "env; echo done"],
        env={"RDEPLOY_JOB_DIR": str(tmp_path)},
        cwd=tmp_path,
        log_path=log,
    )
    deadline = time.monotonic() + 10
    while "done" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.02)

    seen = dict(line.split("=", 1) for line in log.read_text().splitlines() if "=" in line)
    assert started.pid > 0
    assert "worker-secret-value" not in log.read_text()
    assert "aws-secret-value" not in log.read_text()
    assert seen["RDEPLOY_JOB_DIR"] == str(tmp_path)
    assert seen[processes.MARKER] == "test-env-scrub"
    assert seen["HOME"] == str(tmp_path)
    assert seen["PATH"] == os.environ["PATH"]
