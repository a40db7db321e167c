"""Hostile models deployed through the pipeline to local endpoints: each attack runs inside
its runtime container (the model reports what it tried), fails there, and leaves the
worker and the gateway healthy. Code in predict.R runs as code hidden in a crafted .rds
would (CVE-2024-27322): at load, or on a prediction request that asks for it."""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.core.files.base import ContentFile

from deployer.integrations.containers import cli, runtimes
from deployer.models import Deployment, Endpoint, LogLine, ModelVersion
from deployer.services.endpoints import endpoint_create, endpoint_delete, endpoint_invoke
from deployer.services.reconciler import pipeline_reconcile
from deployer.tests.gateway_support import Echo, UnixHTTPServer
from deployer.tests.intake_support import tar_gz
from deployer.tests.pipeline_support import container_running, iris_version
from testsupport.pipeline import drive
from testsupport.r_models import expected, rows_csv
from testsupport.waiting import wait_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("no_runtime_outlives_the_test"),
]

# Helpers every hostile model starts with: targets.txt (name=value lines the test writes)
# and attempt(), which says "ok" or "denied: <why>".
PRELUDE = rb"""
targets <- function(model_dir) {
  lines <- readLines(file.path(model_dir, "targets.txt"))
  setNames(sub("^[^=]*=", "", lines), sub("=.*$", "", lines))
}
attempt <- function(expr) tryCatch({ force(expr); "ok" },
  error = function(e) paste("denied:", conditionMessage(e)),
  warning = function(w) paste("denied:", conditionMessage(w)))
connect <- function(host, port) attempt({
  con <- socketConnection(host, as.integer(port), blocking = TRUE, open = "r+b", timeout = 3)
  close(con)
})
"""

# At load: the network, other endpoints, the worker's secrets, the data dir, the image.
PROBE_R = (
    PRELUDE
    + rb"""
load_fn <- function(model_dir) {
  t <- targets(model_dir)
  environ <- unlist(lapply(list.files("/proc", pattern = "^[0-9]+$", full.names = TRUE), function(dir) {
    raw <- tryCatch(readBin(file.path(dir, "environ"), "raw", 1e6),
                    error = function(e) raw(0), warning = function(w) raw(0))
    if (!length(raw)) return(character(0))
    sub("=.*$", "", strsplit(rawToChar(replace(raw, raw == as.raw(0), as.raw(10))), "\n")[[1]])
  }))
  commands <- vapply(list.files("/proc", pattern = "^[0-9]+$", full.names = TRUE), function(dir) {
    tryCatch(readLines(file.path(dir, "comm"), warn = FALSE)[1], error = function(e) "?", warning = function(w) "?")
  }, "")
  report <- list(
    redis_loopback = connect("127.0.0.1", t[["redis_port"]]),
    host_listener = connect(t[["host_ip"]], t[["host_port"]]),
    metadata_service = connect("169.254.169.254", 80),
    outside = connect("1.1.1.1", 80),
    neighbour_socket = as.character(file.exists(t[["neighbour_socket"]])),
    neighbour_process = attempt(readLines(file.path("/proc", t[["neighbour_pid"]], "cmdline"), warn = FALSE)),
    kill_neighbour = as.character(tools::pskill(as.integer(t[["neighbour_pid"]]), tools::SIGKILL)),
    worker_process = attempt(readLines(file.path("/proc", t[["worker_pid"]], "environ"), warn = FALSE)),
    kill_worker = as.character(tools::pskill(as.integer(t[["worker_pid"]]), tools::SIGTERM)),
    socket_dir = paste(list.files("/run/rdeploy", all.files = TRUE, no.. = TRUE), collapse = ","),
    environ_names = paste(sort(unique(environ)), collapse = ","),
    processes = paste(sort(unique(commands)), collapse = ","),
    data_dir = as.character(file.exists(t[["data_dir"]])),
    database = as.character(file.exists(t[["database"]])),
    write_usr = attempt(writeLines("x", "/usr/local/planted")),
    write_etc = attempt(writeLines("x", "/etc/planted")),
    write_runtime = attempt(writeLines("x", "/opt/rdeploy/runtime/planted")),
    write_model = attempt(writeLines("x", file.path(model_dir, "planted"))),
    write_tmp = attempt(writeLines("x", "/tmp/planted")),
    exec_tmp = attempt({
      stopifnot(file.copy("/bin/true", "/tmp/true", overwrite = TRUE), Sys.chmod("/tmp/true", "755"))
      status <- system2("/tmp/true", stdout = FALSE, stderr = FALSE)
      if (status != 0) stop("exit status ", status)
    }),
    model_mount = grep(" /opt/ml/model ", readLines("/proc/self/mounts"), value = TRUE, fixed = TRUE)[1],
    uid = system("id -u", intern = TRUE)
  )
  encoded <- as.character(jsonlite::toJSON(report, auto_unbox = TRUE))
  message("hostile report: ", encoded)
  structure(list(report = encoded), class = "probe")
}
predict_fn <- function(model, data) rep(model$report, nrow(data))
"""
)

# Replaces the runtime's socket with a link to another socket before the worker locks the
# directory (a marker says when), or, with swap=late, on a prediction once it is locked.
SOCKET_SWAP_R = (
    PRELUDE
    + rb"""
swap <- function(target) attempt({
  sock <- "/run/rdeploy/runtime.sock"
  stopifnot(file.remove(sock), file.symlink(target, sock))
})
load_fn <- function(model_dir) {
  t <- targets(model_dir)
  if (t[["swap"]] == "late") return(list(squatter = t[["squatter"]]))
  for (i in 1:200) { if (file.exists("/run/rdeploy/runtime.sock")) break; Sys.sleep(0.05) }
  message("socket swap before the lock: ", swap(t[["squatter"]]))
  file.create("/run/rdeploy/swapped")
  list(squatter = t[["squatter"]])
}
predict_fn <- function(model, data) rep(swap(model$squatter), nrow(data))
"""
)

# On request: a fork bomb, a process that keeps re-forking, a memory hog.
RAMPAGE_R = (
    PRELUDE
    + rb"""
load_fn <- function(model_dir) list()
predict_fn <- function(model, data) {
  action <- as.character(data$action[1])
  if (action == "forkbomb") {
    message("starting a fork bomb")
    system("bash -c 'bomb() { bomb | bomb & }; bomb' >/dev/null 2>&1", wait = FALSE)
  } else if (action == "reforker") {
    message("starting a re-forking survivor")
    system("setsid bash -c 'while :; do (sleep 600 &); sleep 0.2; done' >/dev/null 2>&1", wait = FALSE)
  } else if (action == "memory") {
    message("allocating 8 GB")
    hog <- numeric(1e9)
    return(length(hog))
  }
  "launched"
}
"""
)


def hostile_model(owner: User, iris_models: Path, predict_r: bytes, targets: dict[str, str]) -> ModelVersion:
    """A ready version of a predict.R bundle (no inspection: the pipeline runs what it gets)."""
    bundle = tar_gz(
        {
            "model.rds": (iris_models / "v1.rds").read_bytes(),
            "predict.R": predict_r,
            "targets.txt": "".join(f"{name}={value}\n" for name, value in targets.items()).encode(),
        }
    )
    model = iris_version(owner, iris_models, "v1", example=None)
    model.artifact.save("hostile.tar.gz", ContentFile(bundle), save=False)
    model.artifact_kind = ModelVersion.ArtifactKind.TAR_GZ
    model.save()
    return model


def deploy(owner: User, name: str, model: ModelVersion, **options: object) -> Deployment:
    issued = endpoint_create(owner=owner, name=name, model_version=model, options=options)
    return drive(issued.endpoint.current_deployment)  # type: ignore[arg-type]


def predict(owner: User, name: str, body: bytes, content_type: str = "text/csv") -> tuple[int, bytes]:
    result = endpoint_invoke(user=owner, name=name, body=body, headers={"Content-Type": content_type})
    assert result is not None
    return result.status, result.body


def healthy_neighbour(owner: User, iris_models: Path) -> None:
    """The other endpoint (and the gateway in front of it) still predicts what R predicts."""
    truth = expected(iris_models)
    status, body = predict(owner, "neighbour", rows_csv(truth["rows"]))
    assert (status, json.loads(body)) == (200, {"predictions": truth["v1"]})


def processes_of(uid: int) -> list[int]:
    """Host pids of every process running as ``uid`` (the container's processes included)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            status = Path(entry.path, "status").read_text()
        except OSError:
            continue
        uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
        if int(uids[0]) == uid:
            found.append(int(entry.name))
    return found


def delete(endpoint_name: str) -> None:
    deletion = endpoint_delete(endpoint=Endpoint.objects.get(name=endpoint_name))
    assert deletion is not None
    assert drive(deletion).status == Deployment.Status.SUCCEEDED


@pytest.fixture
def host_listener() -> Iterator[tuple[str, int]]:
    """A TCP service on this machine's own (non-loopback) address, as a database or a
    service on the local network would be."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("10.255.255.255", 1))  # no packet is sent: picks the outgoing address
        address = probe.getsockname()[0]
    server = socket.create_server((address, 0))
    accepted: list[object] = []

    def accept() -> None:
        while True:
            try:
                connection, _ = server.accept()
            except OSError:
                return
            accepted.append(connection)
            connection.close()

    threading.Thread(target=accept, daemon=True).start()
    yield address, server.getsockname()[1]
    server.close()
    assert accepted == [], "something reached the host's service"


@pytest.fixture
def squatter(tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    """A Unix socket answering like a runtime (what a planted link would lead the gateway
    to), and the requests it received."""
    received: list[str] = []

    class Recording(Echo):
        def do_GET(self) -> None:
            received.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_POST(self) -> None:
            received.append(self.path)
            super().do_POST()

    path = str(tmp_path / "squatter.sock")
    server = UnixHTTPServer(path, Recording)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield path, received
    server.shutdown()
    server.server_close()


def test_a_model_reaches_no_network_no_neighbour_no_secret_and_cannot_write_its_image(
    owner: User, iris_models: Path, host_listener: tuple[str, int]
) -> None:
    assert deploy(owner, "neighbour", iris_version(owner, iris_models, "v1")).status == Deployment.Status.SUCCEEDED
    neighbour = Endpoint.objects.get(name="neighbour").runtime
    host_ip, host_port = host_listener
    targets = {
        "redis_port": os.environ["RDEPLOY_TEST_REDIS_PORT"],
        "host_ip": host_ip,
        "host_port": str(host_port),
        "neighbour_socket": neighbour["socket"],
        # Host pids: the neighbour container's main process, and this process (the worker here).
        "neighbour_pid": cli.check(["inspect", "--format", "{{.State.Pid}}", neighbour["container"]]).strip(),
        "worker_pid": str(os.getpid()),
        "data_dir": str(settings.DATA_DIR),
        # SQLite's file, or PostgreSQL's socket directory.
        "database": str(settings.DATABASES["default"]["HOST"] or settings.DATABASES["default"]["NAME"]),
    }
    model = hostile_model(owner, iris_models, PROBE_R, targets)
    assert deploy(owner, "probe", model).status == Deployment.Status.SUCCEEDED

    status, body = predict(owner, "probe", b'{"x": [1]}', "application/json")
    assert status == 200, body
    report = json.loads(json.loads(body)["predictions"][0])

    for attempt in ("redis_loopback", "host_listener", "metadata_service", "outside"):
        assert report[attempt].startswith("denied"), (attempt, report[attempt])
    assert report["neighbour_socket"] == "FALSE"
    # Other processes of this machine are not in its pid namespace: not there to read or kill.
    assert report["neighbour_process"].startswith("denied")
    assert report["worker_process"].startswith("denied")
    assert (report["kill_neighbour"], report["kill_worker"]) == ("FALSE", "FALSE")
    assert container_running(neighbour["container"])
    assert report["socket_dir"] == "runtime.sock"  # its own socket, nothing else
    # It sees its own processes and its own environment only: nothing of the worker's.
    assert set(report["processes"].split(",")) <= {"serve", "haproxy", "R", "Rscript", "sh", "bash", "id"}, report
    assert "DJANGO_SECRET_KEY" not in report["environ_names"]
    assert "REDIS_URL" not in report["environ_names"]
    assert report["data_dir"] == "FALSE"
    assert report["database"] == "FALSE"
    for attempt in ("write_usr", "write_etc", "write_runtime", "write_model"):
        assert report[attempt].startswith("denied"), (attempt, report[attempt])
    assert report["write_tmp"] == "ok"
    # What it writes, or brings in its bundle, does not run as a program.
    assert report["exec_tmp"].startswith("denied"), report["exec_tmp"]
    assert "noexec" in report["model_mount"].split()[3].split(","), report["model_mount"]
    assert report["uid"] == str(runtimes.runtime_uid(Endpoint.objects.get(name="probe").runtime["deployment"]))
    healthy_neighbour(owner, iris_models)
    # What it tried is in its endpoint's log, read through the engine.
    pipeline_reconcile()
    assert LogLine.objects.filter(endpoint__name="probe", source="runtime", message__contains="hostile report")


def test_a_socket_swapped_for_a_link_before_the_lock_is_refused(
    owner: User, iris_models: Path, squatter: tuple[str, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    squatter_path, received = squatter
    lock_socket = runtimes.lock_socket

    def lock_after_the_swap(socket_dir: Path, *, group: int) -> Path:
        # The model wins the race on purpose: the worker locks only once it has swapped.
        if (socket_dir / runtimes.SOCKET_NAME).exists() or (socket_dir / runtimes.SOCKET_NAME).is_symlink():
            wait_for(lambda: (socket_dir / "swapped").exists(), timeout=30, what="the model's swap")
        return lock_socket(socket_dir, group=group)

    monkeypatch.setattr(runtimes, "lock_socket", lock_after_the_swap)
    model = hostile_model(owner, iris_models, SOCKET_SWAP_R, {"squatter": squatter_path, "swap": "early"})

    deployment = deploy(owner, "swapper", model)

    assert deployment.status == Deployment.Status.FAILED
    assert "replaced or joined by something else" in deployment.error
    assert "is not a socket" in deployment.error
    assert received == []  # the gateway never connected through the link
    assert Endpoint.objects.get(name="swapper").runtime == {}
    assert runtimes.names(endpoint="swapper") == []
    pipeline_reconcile()
    assert LogLine.objects.filter(endpoint__name="swapper", message__contains="socket swap before the lock: ok")


def test_a_socket_cannot_be_swapped_once_locked(
    owner: User, iris_models: Path, squatter: tuple[str, list[str]]
) -> None:
    squatter_path, received = squatter
    model = hostile_model(owner, iris_models, SOCKET_SWAP_R, {"squatter": squatter_path, "swap": "late"})
    assert deploy(owner, "late", model).status == Deployment.Status.SUCCEEDED
    socket_path = Endpoint.objects.get(name="late").runtime["socket"]

    first = predict(owner, "late", b'{"x": [1]}', "application/json")
    second = predict(owner, "late", b'{"x": [1]}', "application/json")

    assert first[0] == 200
    assert json.loads(first[1])["predictions"][0].startswith("denied")
    assert second[0] == 200  # still its own socket, still the runtime answering
    assert Path(socket_path).is_socket()
    assert received == []


@pytest.mark.parametrize("action", ["forkbomb", "reforker"])
def test_processes_a_model_forks_stay_within_its_limit_and_none_survives_removal(
    owner: User, iris_models: Path, action: str
) -> None:
    assert deploy(owner, "neighbour", iris_version(owner, iris_models, "v1")).status == Deployment.Status.SUCCEEDED
    model = hostile_model(owner, iris_models, RAMPAGE_R, {})
    assert deploy(owner, "rampage", model).status == Deployment.Status.SUCCEEDED
    container = Endpoint.objects.get(name="rampage").runtime["container"]
    uid = runtimes.runtime_uid(Endpoint.objects.get(name="rampage").runtime["deployment"])
    before = len(processes_of(uid))

    status, body = predict(owner, "rampage", f"action\n{action}\n".encode())
    assert (status, json.loads(body)) == (200, {"predictions": ["launched"]})

    # It ran: the uid's processes multiply (the bomb up to the container's limit).
    wait_for(lambda: len(processes_of(uid)) > before + 5, timeout=30, what=f"the {action} to spread")
    assert len(processes_of(uid)) <= runtimes.PIDS_LIMIT
    healthy_neighbour(owner, iris_models)

    delete("rampage")

    assert runtimes.state(container) is None
    wait_for(lambda: processes_of(uid) == [], timeout=10, what=f"no process of uid {uid}")
    healthy_neighbour(owner, iris_models)


def test_a_memory_hog_is_stopped_at_the_containers_limit(owner: User, iris_models: Path) -> None:
    assert deploy(owner, "neighbour", iris_version(owner, iris_models, "v1")).status == Deployment.Status.SUCCEEDED
    model = hostile_model(owner, iris_models, RAMPAGE_R, {})
    assert deploy(owner, "hog", model, memory_mb=512).status == Deployment.Status.SUCCEEDED

    status, _ = predict(owner, "hog", b"action\nmemory\n")

    assert status != 200
    pipeline_reconcile()
    assert LogLine.objects.filter(endpoint__name="hog", source="runtime", message__contains="allocating 8 GB")
    healthy_neighbour(owner, iris_models)
    # The runtime serves on (or was restarted): only the request that asked for 8 GB failed.
    container = Endpoint.objects.get(name="hog").runtime["container"]
    wait_for(lambda: container_running(container), timeout=30, what="the runtime")
    assert Endpoint.objects.get(name="hog").status == Endpoint.Status.LIVE


# Output meant to fool the log reader: a carriage return before text that looks like the
# engine's timestamp (a bad one, and one from the year 2999), and floods of long lines.
LOG_FORGER_R = (
    PRELUDE
    + rb"""
load_fn <- function(model_dir) list()
predict_fn <- function(model, data) {
  action <- as.character(data$action[1])
  if (action == "forge") {
    message("harmless\r1 not-a-timestamp")
    message("x\r2999-01-01T00:00:00.000000000Z forged: nothing to see")
  } else if (action == "flood") {
    message(strrep("B", 3 * 1024^2))
    for (i in 1:300) message(strrep("C", 10000))
  } else {
    message("after the forgery: ", action)
  }
  "logged"
}
"""
)


def test_a_model_cannot_break_log_collection_or_its_deletion_with_forged_timestamps(
    owner: User, iris_models: Path
) -> None:
    from deployer.targets.local import LocalTarget

    assert (
        deploy(owner, "forger", hostile_model(owner, iris_models, LOG_FORGER_R, {})).status
        == Deployment.Status.SUCCEEDED
    )
    endpoint = Endpoint.objects.get(name="forger")
    container = endpoint.runtime["container"]
    assert predict(owner, "forger", b"action\nforge\n")[0] == 200
    wait_for(lambda: LocalTarget().collect_logs(endpoint), what="the forged lines")

    assert predict(owner, "forger", b"action\nlater\n")[0] == 200
    wait_for(lambda: LocalTarget().collect_logs(endpoint), what="the line after the forgery")

    messages = list(LogLine.objects.filter(endpoint=endpoint, source="runtime").values_list("message", flat=True))
    # Each forged line is stored whole, as one line: the text after \r is the model's.
    assert "harmless\r1 not-a-timestamp" in messages
    assert any(message.startswith("x\r2999-01-01T00:00:00.000000000Z forged") for message in messages)
    assert "after the forgery: later" in messages
    delete("forger")
    assert runtimes.state(container) is None


def test_a_flood_of_long_log_lines_is_stored_cut_and_within_a_budget(owner: User, iris_models: Path) -> None:
    from deployer.targets.local import LocalTarget
    from deployer.targets.local.logs import MAX_LOG_BYTES_PER_COLLECT, MAX_LOG_LINE_BYTES

    assert (
        deploy(owner, "flood", hostile_model(owner, iris_models, LOG_FORGER_R, {})).status
        == Deployment.Status.SUCCEEDED
    )
    endpoint = Endpoint.objects.get(name="flood")
    LocalTarget().collect_logs(endpoint)
    LogLine.objects.filter(endpoint=endpoint).delete()
    assert predict(owner, "flood", b"action\nflood\n")[0] == 200
    # The access line follows the model's lines: once it is there, they all are.
    wait_for(
        lambda: b"POST /invocations" in cli.run(["logs", "--tail", "1", endpoint.runtime["container"]]).stdout,
        what="the flood to be in the container's log",
    )

    LocalTarget().collect_logs(endpoint)

    messages = list(
        LogLine.objects.filter(endpoint=endpoint, source="runtime").order_by("pk").values_list("message", flat=True)
    )
    assert max(len(message.encode()) for message in messages) < MAX_LOG_LINE_BYTES + 100
    assert sum(len(message.encode()) for message in messages) <= MAX_LOG_BYTES_PER_COLLECT
    skipped_line = re.fullmatch(r"… (\d+) runtime log lines skipped", messages[0])
    assert skipped_line is not None
    skipped = int(skipped_line[1])
    # The 3 MB line went first; of the 300 lines of 10 kB those that fit are kept, the latest.
    assert skipped + len(messages) - 1 >= 301
    # (The engine stamps each chunk it read of a long line, and joins them: where the first
    # chunk ends varies.)
    cut = [message for message in messages if message.startswith("C")]
    assert len(cut) > 100
    assert all(re.search(r" … \(cut: \d+ more bytes\)$", message) for message in cut)


# Writes into its socket directory the moment it loads, while the directory may still be
# the container's: a file there would stay its to grow on the host's disk.
SOCKET_DIR_FILL_R = (
    PRELUDE
    + rb"""
load_fn <- function(model_dir) list(planted = attempt(writeLines("seed", "/run/rdeploy/fill")))
predict_fn <- function(model, data) rep(model$planted, nrow(data))
"""
)


def test_the_socket_directory_is_locked_before_the_model_loads_even_when_the_worker_polls_late(
    owner: User, iris_models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deployer.targets.local import LocalTarget

    wait_healthy = LocalTarget.STEPS["wait_healthy"]

    def busy_worker(self: LocalTarget, ctx: object) -> object:
        time.sleep(3)  # the queued poll runs late: the model has long loaded by then
        return wait_healthy(self, ctx)  # type: ignore[arg-type]

    monkeypatch.setitem(LocalTarget.STEPS, "wait_healthy", busy_worker)
    model = hostile_model(owner, iris_models, SOCKET_DIR_FILL_R, {})

    assert deploy(owner, "early", model).status == Deployment.Status.SUCCEEDED

    status, body = predict(owner, "early", b'{"x": [1]}', "application/json")
    assert status == 200
    assert json.loads(body)["predictions"][0].startswith("denied")
    assert os.listdir(Path(Endpoint.objects.get(name="early").runtime["socket"]).parent) == ["runtime.sock"]


def test_a_file_left_in_the_socket_directory_before_the_lock_fails_the_rollout(
    owner: User, iris_models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lock_socket = runtimes.lock_socket

    def lock_after_the_write(socket_dir: Path, *, group: int) -> Path:
        # The model wins the race on purpose: the worker locks only once it has written.
        if (socket_dir / runtimes.SOCKET_NAME).exists():
            wait_for(lambda: (socket_dir / "fill").exists(), timeout=30, what="the model's file")
        return lock_socket(socket_dir, group=group)

    monkeypatch.setattr(runtimes, "lock_socket", lock_after_the_write)
    model = hostile_model(owner, iris_models, SOCKET_DIR_FILL_R, {})

    deployment = deploy(owner, "filler", model)

    assert deployment.status == Deployment.Status.FAILED
    assert "holds more than the socket: fill" in deployment.error
    assert Endpoint.objects.get(name="filler").runtime == {}
    assert runtimes.names(endpoint="filler") == []


def test_an_endpoint_name_chosen_to_share_a_victims_uid_gets_a_uid_of_its_own(owner: User, iris_models: Path) -> None:
    victim = deploy(owner, "victim", iris_version(owner, iris_models, "v1"))
    victim_container = Endpoint.objects.get(name="victim").runtime["container"]

    # Uids were once a hash of the container name, which the endpoint's name sets: the
    # attacker tries names until one hashes like the victim's (its deployment is the next).
    def name_hash(name: str) -> int:
        return zlib.crc32(name.encode()) % 80_000

    attacker = next(
        f"a{attempt}"
        for attempt in range(10**6)
        if name_hash(f"rdeploy-{settings.INSTALLATION_ID}-a{attempt}-{victim.pk + 1}") == name_hash(victim_container)
    )
    deployment = deploy(owner, attacker, iris_version(owner, iris_models, "v1"))
    assert deployment.pk == victim.pk + 1

    users = {
        cli.check(["inspect", "--format", "{{.Config.User}}", Endpoint.objects.get(name=name).runtime["container"]])
        for name in ("victim", attacker)
    }
    assert len(users) == 2
    for user in users:
        # Not a host account's, nor one inspection gives its containers (1 000 000 and up).
        assert not 0 < int(user.split(":")[0]) < 2_000_000
