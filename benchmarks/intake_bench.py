"""Model intake: upload throughput and web-process memory for a large file, and the time
from upload to `ready` for the example randomForest.

    .venv/bin/python benchmarks/intake_bench.py [--size-mib 1024] [--runs 3]

Starts its own Redis, a gunicorn web process (one sync worker, as in production) and a
Celery worker on a temporary RDEPLOY_DATA_DIR, then
1. streams a --size-mib upload (a valid uncompressed .rds header followed by filler, so
   it is accepted and stored) over HTTP and prints the throughput and the peak resident
   memory (VmHWM from /proc) of the gunicorn worker that received it;
2. uploads a randomForest on iris (200 trees) with a 5-row sample --runs times and prints
   the time from the start of the POST to `ready` as seen by polling the API, plus the
   R-side timings inspection recorded. Goal: <= 3 s.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the repository root: testsupport/ serves tests and benchmarks alike
from testsupport.installation import BenchmarkInstallation, celery_worker_command  # noqa: E402

BOUNDARY = "rdeploy-bench-boundary"
GOAL_SECONDS = 3.0


def kib(status_field: str, pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(status_field + ":"):
            return int(line.split()[1])
    return 0


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found += [int(child) for child in text]
    return found


def multipart_head(fields: dict[str, str], file_field: str, filename: str) -> bytes:
    parts = [
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        for name, value in fields.items()
    ]
    parts.append(
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{file_field}"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    )
    return "".join(parts).encode()


def big_rds_chunks(size: int, chunk: int = 4 * 1024 * 1024) -> Iterator[bytes]:
    """An uncompressed XDR serialization header (R 4.2.2, format 3), then zeros."""
    header = b"X\n" + struct.pack(">iii", 3, 0x040202, 0x030500) + struct.pack(">i", 5) + b"UTF-8"
    yield header
    remaining = size - len(header)
    filler = bytes(chunk)
    while remaining > 0:
        yield filler[: min(chunk, remaining)]
        remaining -= chunk


def post_streaming(port: int, token: str, fields: dict[str, str], size: int) -> tuple[int, dict[str, Any], float]:
    head = multipart_head(fields, "file", "big.rds")
    tail = f"\r\n--{BOUNDARY}--\r\n".encode()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    started = time.monotonic()
    connection.putrequest("POST", "/api/v1/models/")
    connection.putheader("Authorization", f"Token {token}")
    connection.putheader("Content-Type", f"multipart/form-data; boundary={BOUNDARY}")
    connection.putheader("Content-Length", str(len(head) + size + len(tail)))
    connection.endheaders()
    connection.send(head)
    for chunk in big_rds_chunks(size):
        connection.send(chunk)
    connection.send(tail)
    response = connection.getresponse()
    body = json.loads(response.read() or b"{}")
    return response.status, body, time.monotonic() - started


def post_files(port: int, token: str, fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> Any:
    body = b"".join(
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    )
    for field, (filename, content) in files.items():
        body += (
            (
                f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n"
            ).encode()
            + content
            + b"\r\n"
        )
    body += f"--{BOUNDARY}--\r\n".encode()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request(
        "POST",
        "/api/v1/models/",
        body,
        {"Authorization": f"Token {token}", "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
    )
    response = connection.getresponse()
    return response.status, json.loads(response.read())


def get(port: int, token: str, path: str) -> Any:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", path, headers={"Authorization": f"Token {token}"})
    return json.loads(connection.getresponse().read())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the temporary data directory")
    args = parser.parse_args()

    with BenchmarkInstallation(
        "intake",
        keep=args.keep,
        allowed_hosts="127.0.0.1,localhost",
        RDEPLOY_MAX_UPLOAD_BYTES=str(max(2 * 1024**3, (args.size_mib + 16) * 1024**2)),
    ) as installation:
        return run(installation, args)


def run(installation: BenchmarkInstallation, args: argparse.Namespace) -> int:
    token = installation.api_token("bench")
    web_port = installation.serve("web", "config.wsgi", workers=1, options=("--timeout", "600"))
    time.sleep(0.5)
    worker_pid = children(installation.children["web"].pid)[0]
    before_kib = kib("VmRSS", worker_pid)

    size = args.size_mib * 1024**2
    status, body, seconds = post_streaming(web_port, token, {"name": "big"}, size)
    peak_kib = kib("VmHWM", worker_pid)
    print(f"upload: {args.size_mib} MiB in {seconds:.2f} s = {args.size_mib / seconds:.0f} MiB/s (HTTP {status})")
    print(
        f"web worker memory: {before_kib / 1024:.0f} MiB resident before, peak {peak_kib / 1024:.0f} MiB "
        f"(+{(peak_kib - before_kib) / 1024:.0f} MiB for a {args.size_mib} MiB upload)"
    )
    if status != 201:
        print(f"unexpected answer: {body}")
        return 1
    # Only filler after the header: drop it so the worker's queue starts with the forest.
    connection = http.client.HTTPConnection("127.0.0.1", web_port, timeout=60)
    connection.request("DELETE", f"/api/v1/models/{body['id']}/", headers={"Authorization": f"Token {token}"})
    assert connection.getresponse().status == 204

    installation.spawn("worker", celery_worker_command("-P", "solo", "-Q", "rdeploy", "-l", "INFO", "--without-mingle"))
    model_dir = installation.data_dir / "trained"
    model_dir.mkdir()
    subprocess.run(
        [
            "Rscript",
            "--vanilla",
            "-e",
            "library(randomForest); set.seed(1); "
            f"saveRDS(randomForest(Species ~ ., data = iris, ntree = 200), '{model_dir}/rf.rds'); "
            f"write.csv(iris[c(1, 51, 101, 2, 52), 1:4], '{model_dir}/sample.csv', row.names = FALSE)",
        ],
        check=True,
        capture_output=True,
    )
    model = (model_dir / "rf.rds").read_bytes()
    sample = (model_dir / "sample.csv").read_bytes()
    # The clock starts once the worker is consuming, as on a running installation.
    deadline = time.monotonic() + 60
    while b" ready." not in (installation.logs / "worker.log").read_bytes():
        if time.monotonic() > deadline:
            raise RuntimeError(f"the Celery worker did not start; see {installation.logs / 'worker.log'}")
        time.sleep(0.1)
    totals: list[float] = []
    for number in range(1, args.runs + 1):
        started = time.monotonic()
        status, created = post_files(
            web_port, token, {"name": f"iris-{number}"}, {"file": ("rf.rds", model), "sample": ("s.csv", sample)}
        )
        while True:
            body = get(web_port, token, f"/api/v1/models/{created['id']}/")
            if body["status"] != "inspecting":
                break
            time.sleep(0.02)
        total = time.monotonic() - started
        totals.append(total)
        timings = body["inspection"].get("timings", {})
        r_side = timings.get("r_script", {})
        print(
            f"randomForest run {number}: {body['status']} {total:.2f} s after upload "
            f"(container {timings.get('container', 0):.2f} s, R in it: load {r_side.get('load', 0):.2f} s, "
            f"predict {r_side.get('predict', 0):.2f} s)"
        )
    print(
        f"randomForest upload -> ready: median {statistics.median(totals):.2f} s, best {min(totals):.2f} s "
        f"(goal <= {GOAL_SECONDS:.0f} s: {'met' if statistics.median(totals) <= GOAL_SECONDS else 'MISSED'})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
