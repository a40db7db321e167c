import os
import time
from pathlib import Path

import pytest

from deployer.integrations import processes


def test_a_runtime_process_inherits_no_secrets_from_the_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DJANGO_SECRET_KEY", "worker-secret-value")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret-value")
    log = tmp_path / "runtime.log"

    started = processes.start(
        identifier="test-env-scrub",
        command=["sh", "-c", "env; echo done"],
        env={"RDEPLOY_MODEL_DIR": str(tmp_path)},
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
    assert seen["RDEPLOY_MODEL_DIR"] == str(tmp_path)
    assert seen[processes.MARKER] == "test-env-scrub"
    assert seen["HOME"] == str(tmp_path)
    assert seen["PATH"] == os.environ["PATH"]


def test_session_cleanup_finds_runtimes_by_their_model_dir_under_the_data_dir(tmp_path: Path) -> None:
    mine, elsewhere = tmp_path / "data" / "endpoints" / "m" / "model", tmp_path / "other" / "model"
    for identifier, model_dir in (("test-under-mine", mine), ("test-under-other", elsewhere)):
        model_dir.mkdir(parents=True)
        processes.start(
            identifier=identifier,
            command=["sleep", "30"],
            env={"RDEPLOY_MODEL_DIR": str(model_dir)},
            cwd=model_dir.parent,
            log_path=model_dir.parent / "runtime.log",
        )
    try:
        found = processes.identifiers_under("RDEPLOY_MODEL_DIR", str(tmp_path / "data"))
        assert "test-under-mine" in found
        assert "test-under-other" not in found
    finally:
        for identifier in ("test-under-mine", "test-under-other"):
            processes.stop(identifier, grace=0.5)
    assert not processes.find("test-under-mine")
