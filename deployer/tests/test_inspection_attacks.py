"""Hostile models against the inspection container, each uploaded through the API: the attack
runs while the model loads (predict.R's load_fn, as code hidden in a crafted .rds would),
reports what it achieved in its error message (so the test sees that it ran), and fails
inside its container; nothing of the host leaks, and no container outlives the inspection."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile

from deployer.integrations.containers import cli, sandbox
from deployer.models import ModelVersion
from deployer.services.model_inspection import model_version_inspect
from deployer.tests.intake_support import MODELS_URL, tar_gz, wait_for_verdict
from testsupport.waiting import wait_for

pytestmark = pytest.mark.slow


def hostile_bundle(trained_models: Path, load_fn: str, **values: object) -> bytes:
    """A bundle whose predict.R runs ``load_fn`` (R code, a function of the model dir) with
    each @NAME@ in it replaced by ``values[name.lower()]``."""
    for name, value in values.items():
        load_fn = load_fn.replace(f"@{name.upper()}@", str(value))
    predict_r = f"load_fn <- function(model_dir) {{\n{load_fn}\n}}\n"
    return tar_gz({"model.rds": (trained_models / "lm" / "model.rds").read_bytes(), "predict.R": predict_r.encode()})


def upload(client: Any, name: str, bundle: bytes) -> int:
    # The sample fits the lm model every bundle carries (mpg ~ wt + hp).
    sample = SimpleUploadedFile("s.csv", b"wt,hp\n3,110\n")
    data = {"name": name, "file": SimpleUploadedFile("model.tar.gz", bundle), "sample": sample}
    response = client.post(MODELS_URL, data, format="multipart")
    assert response.status_code == 201, response.content
    return int(response.json()["id"])


def upload_and_inspect(client: Any, name: str, bundle: bytes) -> ModelVersion:
    """Uploads through the API, then inspects in this process (no worker in these tests)."""
    return model_version_inspect(model_version=ModelVersion.objects.get(pk=upload(client, name, bundle)))


def shown_to_the_uploader(version: ModelVersion) -> str:
    return version.status_reason + json.dumps(version.inspection)


def no_inspection_container_is_left() -> bool:
    return cli.container_names(role="inspection") == []


@pytest.fixture
def secret_in_data_dir() -> Iterator[tuple[Path, str]]:
    """A 0600 file under the data directory holding a secret."""
    path = Path(settings.DATA_DIR) / f"attack-secret-{secrets.token_hex(4)}"
    value = f"data-dir-secret-{secrets.token_hex(16)}"
    path.write_text(value + "\n")
    path.chmod(0o600)
    yield path, value
    path.unlink()


# (a) The old sandbox read the scratch `.stderr` back after R ended: a model that swapped it
# for a symlink (to a secret, /dev/zero) or a FIFO got the secret shown, or hung the worker.
SWAP_SCRATCH_FILES = """
  made <- c(
    file.symlink("@SECRET@", "/scratch/.stderr"),
    file.symlink("/dev/zero", "/scratch/.stdout"),
    system("mkfifo /scratch/.fifo /scratch/temp/.stderr") == 0,
    file.remove(file.path(model_dir, "model.rds")) && file.symlink("@SECRET@", file.path(model_dir, "model.rds"))
  )
  seen <- tryCatch(readLines("@SECRET@"), error = function(e) "unreadable", warning = function(w) "unreadable")
  stop("SWAPPED scratch files (", paste(made, collapse = " "), "); the secret file is ", paste(seen, collapse = ""))
"""


@pytest.mark.django_db(transaction=True)
def test_swapping_scratch_files_for_links_and_fifos_shows_nothing_and_hangs_no_worker(
    owner: User, api_client_for: Any, trained_models: Path, celery_worker: Any, secret_in_data_dir: tuple[Path, str]
) -> None:
    secret_path, secret = secret_in_data_dir
    client = api_client_for(owner)

    body = wait_for_verdict(
        client,
        upload(client, "swapper", hostile_bundle(trained_models, SWAP_SCRATCH_FILES, secret=secret_path)),
        timeout=60,
    )

    assert body["status"] == "invalid"
    assert "SWAPPED scratch files (TRUE TRUE TRUE TRUE)" in body["status_reason"]
    assert "the secret file is unreadable" in body["status_reason"]
    assert secret not in json.dumps(body)
    # The worker is still healthy: the next upload is inspected as usual.
    healthy = upload(client, "healthy", (trained_models / "lm" / "model.rds").read_bytes())
    assert wait_for_verdict(client, healthy, timeout=60)["status"] == "ready"
    assert no_inspection_container_is_left()


# (b) Secrets of the worker (its environment, through /proc) and the data directory.
SNOOP = """
  environ <- function(path) {
    raw <- tryCatch(readBin(path, "raw", 1e6), error = function(e) raw(0), warning = function(w) raw(0))
    raw[raw == as.raw(0)] <- charToRaw(";")
    rawToChar(raw)
  }
  pids <- list.files("/proc", pattern = "^[0-9]+$")
  stop(
    "SNOOPED ", length(pids), " processes: ",
    paste(vapply(file.path("/proc", pids, "environ"), environ, ""), collapse = " | "),
    "; DJANGO_SECRET_KEY=", Sys.getenv("DJANGO_SECRET_KEY", "absent"),
    "; data dir: ", paste(list.files("@DATA_DIR@", recursive = TRUE, all.files = TRUE), collapse = ","),
    "; data dir exists: ", dir.exists("@DATA_DIR@")
  )
"""


@pytest.mark.django_db(transaction=True)
def test_the_workers_environment_secret_key_and_data_dir_are_out_of_reach(
    owner: User, api_client_for: Any, trained_models: Path, celery_worker: Any, secret_in_data_dir: tuple[Path, str]
) -> None:
    # The worker inspecting this runs with DJANGO_SECRET_KEY set (testsupport.env).
    secret_key = os.environ["DJANGO_SECRET_KEY"]
    secret_path, _ = secret_in_data_dir
    data_dir = Path(settings.DATA_DIR)
    client = api_client_for(owner)

    body = wait_for_verdict(
        client, upload(client, "snoop", hostile_bundle(trained_models, SNOOP, data_dir=data_dir)), timeout=60
    )

    assert body["status"] == "invalid"
    reason = body["status_reason"]
    assert "SNOOPED" in reason
    # It read environments: its own container's, with nothing of the worker's in them.
    assert "RDEPLOY_RUNTIME_DIR=/scratch/rdeploy" in reason
    assert "DJANGO_SECRET_KEY=absent" in reason
    assert "data dir exists: FALSE" in reason
    shown = json.dumps(body)
    assert secret_key not in shown
    # What a listing would have shown: the secret's file, the database, the worker's log.
    for name in (secret_path.name, Path(settings.DATABASES["default"]["NAME"]).name, "celery-worker.log"):
        assert name not in shown


# (c) Writing into the image, the installation's paths and the shared temp directories.
WRITE_OUTSIDE_SCRATCH = """
  attempt <- function(path) tryCatch({
    writeLines("planted", path)
    paste("WROTE", path)
  }, error = function(e) paste(path, "denied"), warning = function(w) paste(path, "denied:", conditionMessage(w)))
  paths <- c("/planted", "/etc/planted", "/opt/rdeploy/planted", "/usr/lib/R/planted")
  paths <- c(paths, "/tmp/planted", "/var/tmp/planted")
  stop("WRITES: ", paste(vapply(paths, attempt, ""), collapse = "; "))
"""


@pytest.mark.django_db
def test_writes_outside_the_scratch_directory_fail_on_the_read_only_root(
    owner: User, api_client_for: Any, trained_models: Path
) -> None:
    version = upload_and_inspect(api_client_for(owner), "writer", hostile_bundle(trained_models, WRITE_OUTSIDE_SCRATCH))

    assert version.status == ModelVersion.Status.INVALID
    assert "WRITES: " in version.status_reason
    assert "WROTE" not in version.status_reason
    # /tmp and /var/tmp are world-writable in the image: only the read-only root stops these.
    assert "/tmp/planted denied: cannot open file '/tmp/planted': Read-only file system" in version.status_reason
    assert (
        "/var/tmp/planted denied: cannot open file '/var/tmp/planted': Read-only file system" in version.status_reason
    )


class Listener:
    """A TCP server on every address of this machine that counts connections."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("0.0.0.0", 0))  # noqa: S104 (reachable on every address on purpose)
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
def listener() -> Iterator[Listener]:
    server = Listener()
    yield server
    server.close()


def external_address() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing address
        return str(probe.getsockname()[0])


# (d) The broker on the host's loopback, this machine on its own address, and the internet.
CONNECT = """
  attempt <- function(host, port) tryCatch({
    con <- socketConnection(host, port, blocking = TRUE, open = "r+b", timeout = 3)
    close(con)
    paste(host, "CONNECTED")
  }, error = function(e) paste(host, "refused"), warning = function(w) paste(host, "refused"))
  stop("NETWORK: ", paste(
    attempt("127.0.0.1", @REDIS_PORT@), attempt("@ADDRESS@", @LISTENER_PORT@), attempt("deb.debian.org", 80),
    sep = "; "
  ))
"""


@pytest.mark.django_db
def test_the_model_reaches_neither_redis_nor_this_machine_nor_the_internet(
    owner: User, api_client_for: Any, trained_models: Path, listener: Listener
) -> None:
    bundle = hostile_bundle(
        trained_models,
        CONNECT,
        redis_port=os.environ["RDEPLOY_TEST_REDIS_PORT"],
        address=external_address(),
        listener_port=listener.port,
    )

    version = upload_and_inspect(api_client_for(owner), "caller", bundle)

    assert version.status == ModelVersion.Status.INVALID
    assert "NETWORK: " in version.status_reason
    assert "CONNECTED" not in version.status_reason
    assert listener.connections == 0


# (e) A shell fork bomb, then a look at how far it got.
FORK_BOMB = """
  system("f() { f | f & }; f", wait = FALSE)
  Sys.sleep(3)
  stop("FORK BOMB: ", length(list.files("/proc", pattern = "^[0-9]+$")), " processes")
"""


@pytest.mark.django_db
def test_a_fork_bomb_stops_at_the_process_limit_and_dies_with_its_container(
    owner: User, api_client_for: Any, trained_models: Path
) -> None:
    version = upload_and_inspect(api_client_for(owner), "forker", hostile_bundle(trained_models, FORK_BOMB))

    assert version.status == ModelVersion.Status.INVALID
    processes = int(version.status_reason.split("FORK BOMB: ")[1].split(" ")[0])
    # It multiplied, up to the container's limit (threads and tasks count against it too).
    assert 50 < processes <= version.inspection["sandbox"]["limits"]["pids"]
    assert no_inspection_container_is_left()


# A verdict nested deeper than Python's JSON parser goes, written past R's sink to the
# container's real stdout: it used to raise RecursionError in the worker and leave the
# version inspecting for ever.
DEEP_VERDICT = """
  cat(strrep("[", 100000), "\n", file = "/dev/stdout")
  quit(status = 0)
"""


@pytest.mark.django_db
def test_a_verdict_nested_too_deeply_is_refused_as_unreadable(
    owner: User, api_client_for: Any, trained_models: Path
) -> None:
    version = upload_and_inspect(api_client_for(owner), "deep", hostile_bundle(trained_models, DEEP_VERDICT))

    assert version.status == ModelVersion.Status.INVALID
    assert version.inspection["code"] == "bad_result"
    # The parser did meet the nesting (the fault happened), and the verdict says so.
    assert "could not be read (maximum recursion depth exceeded" in version.status_reason
    assert no_inspection_container_is_left()


# (f) Memory until the kernel says no.
MEMORY_HOG = """
  message("HOGGING")
  hoard <- list()
  repeat hoard[[length(hoard) + 1]] <- runif(1e7)
"""


@pytest.mark.django_db
def test_a_memory_hog_is_killed_at_the_containers_limit_and_reported_out_of_memory(
    owner: User, api_client_for: Any, trained_models: Path, settings: Any
) -> None:
    settings.INSPECT_MEMORY_BYTES = 512 * 1024**2

    version = upload_and_inspect(api_client_for(owner), "hog", hostile_bundle(trained_models, MEMORY_HOG))

    assert version.status == ModelVersion.Status.INVALID
    assert version.inspection["code"] == "out_of_memory"
    assert version.status_reason.startswith("R ran out of memory inspecting the model (limit 512 MiB")
    assert version.inspection["exit_code"] == 137
    assert "HOGGING" in version.inspection["stderr_tail"]
    assert no_inspection_container_is_left()


# (g) A model that never finishes loading, with a background process of its own.
SLEEP_FOREVER = """
  system("while true; do sleep 1; done", wait = FALSE)
  message("SLEEPING")
  Sys.sleep(1e6)
"""


@pytest.mark.django_db
def test_a_model_that_never_finishes_times_out_and_leaves_no_container(
    owner: User, api_client_for: Any, trained_models: Path, settings: Any
) -> None:
    settings.INSPECT_TIMEOUT_SECONDS = 5

    version = upload_and_inspect(api_client_for(owner), "sleeper", hostile_bundle(trained_models, SLEEP_FOREVER))

    assert version.status == ModelVersion.Status.INVALID
    assert version.status_reason.startswith("inspection did not finish within 5 s")
    assert "SLEEPING" in version.inspection["stderr_tail"]
    assert no_inspection_container_is_left()


# (i) Output without end, to both streams (gigabytes would fill the worker's memory or disk).
FLOOD = """
  line <- strrep("x", 1e6)
  repeat {
    cat(line, "\\n", sep = "", file = stdout())
    cat(line, "\\n", sep = "", file = stderr())
  }
"""


@pytest.mark.django_db
def test_a_model_printing_without_end_is_stopped_at_the_output_cap(
    owner: User, api_client_for: Any, trained_models: Path
) -> None:
    version = upload_and_inspect(api_client_for(owner), "flood", hostile_bundle(trained_models, FLOOD))

    assert version.status == ModelVersion.Status.INVALID
    assert version.inspection["code"] == "too_much_output"
    assert version.status_reason == "the model printed more than 64 MiB while being inspected"
    assert len(version.inspection["stderr_tail"]) <= 4000
    assert no_inspection_container_is_left()


# (h) The worker supervising an inspection is killed (SIGKILL, OOM) while its model sleeps.
SUPERVISE_A_SLEEPER = """
from django.conf import settings
from deployer.integrations.containers import sandbox
limits = sandbox.Limits(memory_bytes=256 * 1024**2, wall_seconds=3, scratch_bytes=1024**2)
command = ["sleep", "1000"]
sandbox.run(image=settings.BASE_IMAGE, files={}, command=command, limits=limits, environment={}, name_hint="x")
"""


def _engine_seconds(timestamp: str) -> float:
    """A time the container engine recorded ("2026-12-03T17:43:14.50799914Z"), in seconds."""
    whole, _, fraction = timestamp.rstrip("Z").partition(".")
    return datetime.fromisoformat(whole).timestamp() + float(f"0.{fraction or 0}")


def test_a_container_whose_worker_died_ends_itself_and_the_cleanup_removes_it() -> None:
    worker = subprocess.Popen(
        [sys.executable, "manage.py", "shell", "-c", SUPERVISE_A_SLEEPER],
        cwd=settings.BASE_DIR,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(lambda: cli.container_names(role="inspection"), timeout=30, interval=0.2, what="an inspection container")

    worker.kill()
    worker.wait()

    # Nobody removes it now: its own backstop (PID 1's timeout) ends it.
    wait_for(
        lambda: cli.container_names(role="inspection", status="exited"),
        timeout=3 + sandbox.BACKSTOP_GRACE_SECONDS + 10,
        interval=0.2,
        what="the container to exit",
    )
    # It ran its whole backstop (3 + 10 s; the engine's record is within a second of the
    # timer's), so it did not die with its worker.
    state = sandbox._state(cli.container_names(role="inspection", status="exited")[0])
    assert state is not None
    lived = _engine_seconds(state["FinishedAt"]) - _engine_seconds(state["StartedAt"])
    assert lived > 3 + sandbox.BACKSTOP_GRACE_SECONDS - 1

    def reaped() -> bool:
        # As the periodic reaper does, until the container is old enough (whole seconds).
        sandbox.remove_leftovers(wall_seconds=3, margin_seconds=0)
        return no_inspection_container_is_left()

    wait_for(reaped, timeout=5, interval=0.2, what="the stopped container to be removed")
