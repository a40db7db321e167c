"""Load benchmark (issue 11): many concurrent clients against `make run`'s stack on PostgreSQL.

    .venv/bin/python benchmarks/load_bench.py [--clients 50] [--seconds 60] [--quick] [--upload-every 5]

Starts what `make run` starts (scripts/run.sh: Redis, a Celery worker, Celery beat and
gunicorn with gthread workers) on a temporary data directory and a throwaway PostgreSQL
cluster (testsupport/postgres.py; its durability is off, so writes cost less than on a
production server), or on the database DATABASE_URL names if set (its tables are
migrated). It trains the example model (examples/iris/train.R), uploads it and deploys a
public local endpoint, then runs ``--clients`` clients on keep-alive connections for
``--seconds`` (``--quick``: 10 s), each going round the mixed workload: endpoint status
(GET /api/v1/endpoints/<name>), log polls (GET .../logs), token invocations (POST
.../invocations) and public invocations (POST /e/<name>/invocations); one client uploads
a new model version (new bytes, the same model) every ``--upload-every`` seconds instead.

Prints requests/s, p50/p99 per kind, the error count (any answer but the expected status,
or an exception) and the resident memory of the web (gunicorn and its workers) and worker
(Celery and its pool) processes at the start and the end, beside the issue's goals. The
start is after ``--warmup`` seconds of the same load, not counted, so that memory is a
serving process's rather than a freshly started one's.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import urllib3
from pipeline_bench import _status, remove_containers

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the repository root: testsupport/ serves tests and benchmarks alike
from testsupport.installation import BenchmarkInstallation, celery_worker_command  # noqa: E402
from testsupport.postgres import PostgresServer  # noqa: E402
from testsupport.traffic import Call, Request, TrafficClients, percentile, workers_rss_kib  # noqa: E402
from testsupport.waiting import wait_for  # noqa: E402

NAME = "iris-load"
ROW = b"Sepal.Length,Sepal.Width,Petal.Length,Petal.Width\n5.1,3.5,1.4,0.2\n"
READS = ("status", "logs")
KINDS = ("status", "logs", "token", "public")
GOAL_READ_P99_MS = 100.0
GOAL_GROWTH = 0.20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50, help="concurrent clients")
    parser.add_argument("--seconds", type=float, default=60, help="length of the run")
    parser.add_argument("--quick", action="store_true", help="a 10 s run")
    parser.add_argument("--warmup", type=float, default=10, help="seconds of the same load before the run, not counted")
    parser.add_argument("--upload-every", type=float, default=5, help="seconds between uploads")
    parser.add_argument("--web-workers", type=int, default=2, help="gunicorn processes (make run: 2)")
    parser.add_argument("--threads", type=int, default=8, help="threads per gunicorn process (make run: 8)")
    parser.add_argument(
        "--max-inflight",
        type=int,
        help="RDEPLOY_GATEWAY_MAX_INFLIGHT, the requests per endpoint in progress in a web process (default: "
        "the installation's, 4)",
    )
    parser.add_argument(
        "--max-queued",
        type=int,
        help="RDEPLOY_GATEWAY_MAX_QUEUED, the requests per endpoint waiting for one of those slots in a web "
        "process (default: the installation's, 2); more get 503 at once, and the benchmark counts them as errors",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary data directory")
    args = parser.parse_args()
    seconds = 10 if args.quick else args.seconds

    given_database = os.environ.get("DATABASE_URL", "")
    bounds = {"RDEPLOY_GATEWAY_MAX_INFLIGHT": args.max_inflight, "RDEPLOY_GATEWAY_MAX_QUEUED": args.max_queued}
    extra = {name: str(value) for name, value in bounds.items() if value is not None}
    # A directory of its own: as root, the cluster runs as `postgres`, who owns it.
    postgres = None if given_database else PostgresServer(Path(tempfile.mkdtemp(prefix="rdeploy-load-bench-pg-")))
    try:
        if postgres is not None:
            postgres.start()
        with BenchmarkInstallation("load", keep=args.keep, cleanup=remove_containers, **extra) as installation:
            os.environ["DATABASE_URL"] = given_database or (postgres.url() if postgres else "")
            return run(installation, args, seconds)
    finally:
        if postgres is not None:
            postgres.stop()
            shutil.rmtree(postgres.workdir, ignore_errors=True)


def run(installation: BenchmarkInstallation, args: argparse.Namespace, seconds: float) -> int:
    token = installation.api_token("load-bench")
    # As `make run` starts them (scripts/run.sh).
    worker = installation.spawn("worker", celery_worker_command("-l", "INFO", "-n", f"load-bench-{os.getpid()}@%h"))
    beat = str(installation.data_dir / "beat")
    installation.spawn("beat", [sys.executable, "-m", "celery", "-A", "tasks", "beat", "-l", "INFO", "-s", beat])
    web_port = installation.serve("web", "config.wsgi", workers=args.web_workers, threads=args.threads)
    web = installation.children["web"]
    base = f"http://127.0.0.1:{web_port}"
    http = urllib3.PoolManager(maxsize=4)
    auth = {"Authorization": f"Token {token}"}
    wait_for(lambda: _status(http, f"{base}/healthz") == 200, timeout=60, what="the web server", interval=0.2)
    model_dir = installation.train_example()
    rds = (model_dir / "iris-rf.rds").read_bytes()
    sample = (model_dir / "sample.csv").read_bytes()
    api_key = deploy(http, base, auth, rds, sample)

    plan = workload(token, api_key, rds, sample, args.upload_every)
    # The same load first, not counted: the start's memory is then a served process's,
    # not a freshly imported one's.
    with TrafficClients(web_port, args.clients, plan):
        time.sleep(args.warmup)
    memory_before = {"web": workers_rss_kib(web.pid), "worker": workers_rss_kib(worker.pid)}
    load_before = os.getloadavg()[0]
    with TrafficClients(web_port, args.clients, plan) as traffic:
        time.sleep(seconds)
        calls = traffic.stop()
    memory_after = {"web": workers_rss_kib(web.pid), "worker": workers_rss_kib(worker.pid)}
    # The figures depend on what else the machine runs: say how busy it was.
    load_after = os.getloadavg()[0]
    print(f"load average {load_before:.1f} at the start, {load_after:.1f} at the end ({os.cpu_count()} CPUs)")
    report(calls, seconds, args, memory_before, memory_after)
    return 0


def _json(http: urllib3.PoolManager, url: str, auth: dict[str, str]) -> dict[str, Any]:
    return dict(json.loads(http.request("GET", url, headers=auth).data))


def deploy(http: urllib3.PoolManager, base: str, auth: dict[str, str], rds: bytes, sample: bytes) -> str:
    """Upload the example model, deploy it as a public local endpoint; its API key."""
    fields: dict[str, Any] = {"name": NAME, "file": ("iris-rf.rds", rds), "sample": ("sample.csv", sample, "text/csv")}
    upload = http.request("POST", f"{base}/api/v1/models/", headers=auth, fields=fields)
    assert upload.status == 201, upload.data
    model_id = json.loads(upload.data)["id"]
    wait_for(
        lambda: _json(http, f"{base}/api/v1/models/{model_id}/", auth)["status"] == "ready",
        timeout=180,
        what="the inspection",
        interval=0.2,
    )
    # A throttle no client reaches: the benchmark measures serving, not refusing.
    options = {"throttle": {"rate": 10_000, "burst": 5_000}}
    body = json.dumps({"name": NAME, "model": model_id, "public": True, "options": options})
    create = http.request(
        "POST", f"{base}/api/v1/endpoints/", headers={**auth, "Content-Type": "application/json"}, body=body
    )
    assert create.status == 202, create.data
    wait_for(
        lambda: _json(http, f"{base}/api/v1/endpoints/{NAME}", auth)["status"] == "live",
        timeout=300,
        what="the endpoint to go live",
        interval=0.2,
    )
    return str(json.loads(create.data)["api_key"])


def workload(token: str, api_key: str, rds: bytes, sample: bytes, upload_every: float) -> Any:
    auth = {"Authorization": f"Token {token}"}
    endpoint = f"/api/v1/endpoints/{NAME}"
    requests = {
        "status": Request("status", "GET", endpoint, headers=auth),
        "logs": Request("logs", "GET", f"{endpoint}/logs?after=0", headers=auth),
        "token": Request("token", "POST", f"{endpoint}/invocations", ROW, {**auth, "Content-Type": "text/csv"}),
        "public": Request(
            "public", "POST", f"/e/{NAME}/invocations", ROW, {"x-api-key": api_key, "Content-Type": "text/csv"}
        ),
    }
    raw = gzip.decompress(rds)
    uploads = itertools.count(1)  # across runs (the warm-up's and the measured one)

    def plan(number: int, sequence: int) -> Request:
        if number == 0:
            # New bytes each time (gzip's header holds a time), the same model: a new
            # version to store and inspect, as a data scientist's next upload is.
            fields: dict[str, Any] = {
                "name": NAME,
                "file": ("iris-rf.rds", gzip.compress(raw, mtime=next(uploads))),
                "sample": ("sample.csv", sample, "text/csv"),
            }
            body, content_type = urllib3.encode_multipart_formdata(fields)
            return Request(
                "upload", "POST", "/api/v1/models/", body, {**auth, "Content-Type": content_type}, 201, upload_every
            )
        return requests[KINDS[(number + sequence) % len(KINDS)]]

    return plan


def report(
    calls: list[Call], seconds: float, args: argparse.Namespace, before: dict[str, int], after: dict[str, int]
) -> None:
    errors = [call for call in calls if not call.ok]
    print(
        f"{len(calls)} requests from {args.clients} clients in {seconds:.0f} s: {len(calls) / seconds:.0f} requests/s; "
        f"gunicorn {args.web_workers} x {args.threads} threads, "
        f"at most {os.environ.get('RDEPLOY_GATEWAY_MAX_INFLIGHT', 4)} requests per endpoint in progress and "
        f"{os.environ.get('RDEPLOY_GATEWAY_MAX_QUEUED', 2)} waiting per process"
    )
    print(f"{'kind':8} {'count':>7} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for kind in (*KINDS, "upload"):
        of_kind = [call for call in calls if call.kind == kind]
        times = [(call.finished - call.started) * 1000 for call in of_kind if call.ok]
        print(
            f"{kind:8} {len(of_kind):7} {len(of_kind) / seconds:7.1f} {percentile(times, 0.5):8.1f} "
            f"{percentile(times, 0.99):8.1f} {sum(not call.ok for call in of_kind):7}"
        )
    read_p99 = max(
        percentile([(c.finished - c.started) * 1000 for c in calls if c.kind == kind and c.ok], 0.99) for kind in READS
    )
    print(f"errors: {len(errors)} (goal 0){_verdict(not errors)}")
    if errors:
        shown = Counter(call.describe()[:160] for call in errors)
        for text, count in shown.most_common(5):
            print(f"  {count} x {text}")
    met = read_p99 <= GOAL_READ_P99_MS
    print(f"p99 of reads (status, logs): {read_p99:.1f} ms (goal <= {GOAL_READ_P99_MS:.0f} ms){_verdict(met)}")
    for name in ("web", "worker"):
        growth = (after[name] - before[name]) / before[name] if before[name] else 0.0
        print(
            f"{name} RSS: {before[name] / 1024:.0f} MiB at the start, {after[name] / 1024:.0f} MiB at the end, "
            f"{growth:+.0%} (goal <= +{GOAL_GROWTH:.0%}){_verdict(growth <= GOAL_GROWTH)}"
        )


def _verdict(met: bool) -> str:
    return ": met" if met else ": NOT met"


if __name__ == "__main__":
    raise SystemExit(main())
