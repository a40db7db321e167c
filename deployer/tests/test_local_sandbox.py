"""A deployed local runtime runs the model's code sandboxed (docs/pipeline.md, "The local
runtime's isolation"): real R, the real runtime, the pipeline driven in this process."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile

from deployer.integrations import isolation, processes
from deployer.models import Deployment, Endpoint, ModelVersion
from deployer.services.endpoints import endpoint_create, endpoint_delete, endpoint_invoke
from deployer.services.model_versions import model_version_inspect, model_version_upload
from deployer.targets.base import TargetOptionsError
from deployer.targets.local import LocalTarget
from deployer.tests.intake_support import tar_gz
from deployer.tests.pipeline_support import drive, wait_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("no_runtime_outlives_the_test"),
]

needs_root = pytest.mark.skipif(
    not (isolation.probe().setpriv and isolation.probe().mounts),
    reason="the runtime sandbox needs root (setpriv, unshare --mount)",
)

# Runs while the runtime loads the model (load_fn), as code hidden in a crafted .rds
# would, and writes what it saw into its log and into every prediction it makes.
HOSTILE_PREDICT_R = rb"""
attempt <- function(expr) tryCatch({ force(expr); "ok" }, error = function(e) "denied", warning = function(w) "denied")
load_fn <- function(model_dir) {
  t <- readLines(file.path(model_dir, "targets.txt"))
  environ <- function(pid) tryCatch({
    raw <- readBin(file.path("/proc", pid, "environ"), "raw", 1e6)
    if (length(raw)) paste(rawToChar(raw[raw != as.raw(0)]), "") else "empty"
  }, error = function(e) "denied", warning = function(w) "denied")
  worker_env <- environ(t[1])
  limits <- readLines("/proc/self/limits")
  limit <- function(name) {
    line <- grep(name, limits, value = TRUE)
    strsplit(trimws(sub(name, "", line)), " +")[[1]][1]
  }
  listed <- list.files(t[2], recursive = TRUE, all.files = TRUE)
  report <- c(
    worker_environ = if (grepl("DJANGO_SECRET_KEY", worker_env)) "leaked" else worker_env,
    worker_visible = as.character(file.exists(file.path("/proc", t[1]))),
    data_dir = paste(listed, collapse = ","),
    # From the rollout directory (the working directory) up to the data directory.
    up = paste(list.files("../../..", all.files = TRUE, no.. = TRUE), collapse = ","),
    database = attempt(readBin(t[3], "raw", 16)),
    installation = attempt(stopifnot(length(readLines(t[4], n = 1)) == 1)),
    secret_file = attempt(stopifnot(length(readLines(t[5], n = 1)) == 1)),
    model_dir_write = attempt(writeLines("x", file.path(model_dir, "planted"))),
    kill_root_process = as.character(tools::pskill(as.integer(t[6]), tools::SIGTERM)),
    uid = system("id -u", intern = TRUE),
    address_space = limit("Max address space"),
    processes = limit("Max processes"),
    file_size = limit("Max file size")
  )
  encoded <- paste(names(report), report, sep = "=", collapse = ";")
  message("hostile report: ", encoded)
  structure(list(report = encoded), class = "probe")
}
predict_fn <- function(model, data) rep(model$report, nrow(data))
"""


@pytest.fixture
def root_process() -> Iterator[int]:
    """A process of root's (as another endpoint's runtime used to be) for the model to kill."""
    process = subprocess.Popen(["sleep", "600"])
    yield process.pid
    process.kill()
    process.wait()


def hostile_model(owner: User, trained_models: Path, secret_file: Path, victim_pid: int) -> ModelVersion:
    targets = [
        str(os.getpid()),  # this process drives the pipeline: it is the worker here
        str(settings.DATA_DIR),
        str(settings.DATABASES["default"]["NAME"]),
        str(Path(settings.BASE_DIR) / "manage.py"),
        str(secret_file),
        str(victim_pid),
    ]
    bundle = tar_gz(
        {
            "model.rds": (trained_models / "lm" / "model.rds").read_bytes(),
            "predict.R": HOSTILE_PREDICT_R,
            "targets.txt": ("\n".join(targets) + "\n").encode(),
        }
    )
    version = model_version_upload(
        owner=owner,
        name="hostile",
        file=SimpleUploadedFile("m.tar.gz", bundle),
        sample=SimpleUploadedFile("s.csv", b"x\n1\n"),
    ).model_version
    version = model_version_inspect(model_version=version)
    assert version.status == ModelVersion.Status.READY, version.status_reason
    return version


def deploy(owner: User, name: str, version: ModelVersion, options: dict[str, object] | None = None) -> Endpoint:
    issued = endpoint_create(owner=owner, name=name, model_version=version, options=options or {})
    deployment = drive(issued.endpoint.current_deployment)  # type: ignore[arg-type]
    assert deployment.status == Deployment.Status.SUCCEEDED, deployment.error
    return Endpoint.objects.get(name=name)


def report_from(owner: User, name: str) -> dict[str, str]:
    result = endpoint_invoke(user=owner, name=name, body=b'{"x": [1]}', headers={"Content-Type": "application/json"})
    assert result is not None
    assert result.status == 200, result.body
    report = json.loads(result.body)["predictions"][0]
    return dict(item.split("=", 1) for item in report.split(";"))


@needs_root
def test_a_hostile_model_deployed_locally_sees_no_secrets_no_data_and_cannot_kill_others(
    owner: User, trained_models: Path, secret_file: Path, root_process: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "fake-secret-that-must-not-leak")
    endpoint = deploy(owner, "hostile", hostile_model(owner, trained_models, secret_file, root_process))

    report = report_from(owner, "hostile")

    assert report["worker_environ"] == "denied"
    assert report["worker_visible"] == "FALSE"  # /proc shows only the runtime's own processes
    rollout = endpoint.runtime["deployment"]
    visible = report["data_dir"].split(",")
    # Of the data directory only its own rollout is there: no database, artifacts, other endpoints.
    assert all(path.startswith(f"endpoints/hostile/{rollout}/") for path in visible), visible
    assert any(path.endswith("model/model.rds") for path in visible)
    assert report["up"] == "endpoints"
    assert report["database"] == "denied"
    assert report["installation"] == "denied"
    assert report["secret_file"] == "denied"
    assert report["model_dir_write"] == "denied"
    assert report["kill_root_process"] == "FALSE"
    assert processes.is_running(root_process, processes.start_ticks(root_process) or -1)
    assert report["uid"] == str(isolation.runtime_uid(endpoint.runtime["process"]))
    assert report["uid"] != "0"


@needs_root
def test_the_runtime_runs_as_its_own_uid_with_rlimits_and_stops_completely(
    owner: User, trained_models: Path, secret_file: Path, root_process: int
) -> None:
    endpoint = deploy(
        owner, "limited", hostile_model(owner, trained_models, secret_file, root_process), {"memory_mb": 3072}
    )
    identifier = endpoint.runtime["process"]
    uid = isolation.runtime_uid(identifier)

    report = report_from(owner, "limited")

    assert report["address_space"] == str(3072 * 1024**2)
    assert report["processes"] == "512"
    assert report["file_size"] == str(1024**3)
    pids = processes.find(identifier)
    assert pids
    # HAProxy, R and its Rserve children: every process of the runtime runs as its uid.
    assert {Path(f"/proc/{pid}").stat().st_uid for pid in pids} == {uid}
    log = (Path(settings.DATA_DIR) / "endpoints" / "limited").glob("*/runtime.log")
    assert f"runs as uid {uid}" in next(log).read_text()

    deletion = endpoint_delete(endpoint=endpoint)
    assert deletion is not None
    drive(deletion)

    assert isolation.running_as(uid) == []
    assert not (Path(settings.DATA_DIR) / "endpoints" / "limited").exists()


@needs_root
def test_stop_kills_a_runtime_that_erased_its_marker(tmp_path: Path) -> None:
    # The marker lives in the process's own memory (/proc/<pid>/environ): a model can
    # overwrite it. Its uid it cannot shed.
    identifier = "marker-eraser"
    started = processes.start(
        identifier=identifier,
        command=["env", "-i", "sleep", "600"],
        env={},
        cwd=tmp_path,
        log_path=tmp_path / "runtime.log",
        sandbox=processes.Sandbox(read_only=(tmp_path,)),
    )
    assert started.uid == isolation.runtime_uid(identifier)
    wait_for(lambda: Path(f"/proc/{started.pid}/cmdline").read_bytes().startswith(b"sleep"), what="exec")
    assert processes.find(identifier) == [started.pid]
    assert processes.MARKER.encode() not in Path(f"/proc/{started.pid}/environ").read_bytes()

    processes.stop(identifier, grace=0.5)

    assert not processes.is_running(started.pid, started.start_ticks)
    assert isolation.running_as(isolation.runtime_uid(identifier)) == []


@needs_root
def test_a_runtime_that_writes_past_the_file_size_limit_gets_an_error_not_killed(tmp_path: Path) -> None:
    out = tmp_path / "tmp"
    started = processes.start(
        identifier="file-limit",
        command=["sh", "-c", f'head -c 2000000 /dev/zero > {out}/big; echo "exit $?"; sleep 600'],
        env={},
        cwd=tmp_path,
        log_path=tmp_path / "runtime.log",
        sandbox=processes.Sandbox(read_only=(tmp_path,), writable=(out,), owned=(tmp_path,), file_bytes=1024**2),
    )
    try:
        wait_for(lambda: "exit" in (tmp_path / "runtime.log").read_text(), what="the write")
        assert (out / "big").stat().st_size == 1024**2
        assert "exit 1" in (tmp_path / "runtime.log").read_text()
        assert processes.is_running(started.pid, started.start_ticks)
    finally:
        processes.stop("file-limit", grace=0.5)


class _Pong(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = b'{"predictions": ["from the squatter"]}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@needs_root
def test_a_port_squatted_by_another_process_is_not_taken_for_the_runtime(
    owner: User, trained_models: Path, secret_file: Path, root_process: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another local process (a model of another endpoint could) listens on the port the
    # new runtime is given, and answers like a runtime: it must not receive the endpoint's traffic.
    squatter = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Pong)
    threading.Thread(target=squatter.serve_forever, daemon=True).start()
    monkeypatch.setattr(processes, "free_port", lambda: squatter.server_address[1])
    try:
        version = hostile_model(owner, trained_models, secret_file, root_process)
        issued = endpoint_create(owner=owner, name="squatted", model_version=version)
        deployment = drive(issued.endpoint.current_deployment)  # type: ignore[arg-type]
    finally:
        squatter.shutdown()
        squatter.server_close()

    assert deployment.status == Deployment.Status.FAILED
    assert "another process holds it" in deployment.error
    assert Endpoint.objects.get(name="squatted").runtime.get("port") is None


def test_memory_mb_is_a_whole_number_of_mib_within_bounds() -> None:
    target = LocalTarget()

    assert target.validate_options({"memory_mb": 2048})["memory_mb"] == 2048
    for wrong in (100, 2**21, "4096", 1.5, True):
        with pytest.raises(TargetOptionsError, match="memory_mb"):
            target.validate_options({"memory_mb": wrong})
