"""Shadow benchmark (issue 16): the live route's latency with a 100% shadow running vs without.

    .venv/bin/python benchmarks/shadow_bench.py [--rounds 10] [--seconds 4] [--clients 4] [--pause 0.02] [--quick]

Starts what `make run` starts (scripts/run.sh: Redis, a Celery worker, Celery beat and
gunicorn with gthread workers) on a temporary data directory and a throwaway PostgreSQL
cluster (testsupport/postgres.py), trains the example model (examples/iris/train.R),
uploads it twice (two versions: the same forest, new bytes), deploys the first as a local
endpoint and starts the second as its shadow at 100% through the REST API. Then
``--rounds`` pairs of ``--seconds`` phases, in the order without-with, with-without, ...
(so a drift in what else the machine runs weighs on both alike): "with", every call is
copied to the shadow; "without", none is (the benchmark sets the route's sample to 0 in
the database, as if no shadow ran: its runtime then idles, and turning the copies on and
off takes a second instead of a shadow's start and end). Finally the shadow is stopped
through the REST API.

The calls: ``--clients`` clients, each sending a one-row token invocation and waiting
``--pause`` seconds between calls (a steady load, below what the live runtime can take:
latency, not saturation, is measured; ``--pause 0`` saturates the 2 cores, and then the
shadow's R competes with the live one's for them). Prints, per phase kind, calls, req/s,
p50 and p99 (ms, client-side, over every round), the errors, the shadow's copies stored
and dropped, the median of the rounds' p50 ratios, and the p50 with the shadow against
the goal (within 10% of without).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import urllib3
from pipeline_bench import _status, remove_containers

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the repository root: testsupport/ serves tests and benchmarks alike
from testsupport.installation import BenchmarkInstallation, celery_worker_command  # noqa: E402
from testsupport.postgres import PostgresServer  # noqa: E402
from testsupport.traffic import Call, Request, TrafficClients, percentile  # noqa: E402
from testsupport.waiting import wait_for  # noqa: E402

NAME = "iris-shadow"
ROW = b"Sepal.Length,Sepal.Width,Petal.Length,Petal.Width\n5.1,3.5,1.4,0.2\n"
GOAL_P50_RATIO = 1.10


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10, help="rounds of (without, with) copies")
    parser.add_argument("--seconds", type=float, default=4, help="length of each phase")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients")
    parser.add_argument("--pause", type=float, default=0.02, help="seconds each client waits between calls")
    parser.add_argument("--quick", action="store_true", help="four rounds of 3 s phases")
    parser.add_argument("--web-workers", type=int, default=2, help="gunicorn processes (make run: 2)")
    parser.add_argument("--threads", type=int, default=8, help="threads per gunicorn process (make run: 8)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary data directory")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seconds = 4, 3.0

    # A directory of its own: as root, the cluster runs as `postgres`, who owns it.
    postgres = PostgresServer(Path(tempfile.mkdtemp(prefix="rdeploy-shadow-bench-pg-")))
    try:
        postgres.start()
        with BenchmarkInstallation("shadow", keep=args.keep, cleanup=remove_containers) as installation:
            os.environ["DATABASE_URL"] = postgres.url()
            return run(installation, args)
    finally:
        postgres.stop()
        shutil.rmtree(postgres.workdir, ignore_errors=True)


def run(installation: BenchmarkInstallation, args: argparse.Namespace) -> int:
    token = installation.api_token("shadow-bench")
    installation.spawn("worker", celery_worker_command("-l", "INFO", "-n", f"shadow-bench-{os.getpid()}@%h"))
    beat = str(installation.data_dir / "beat")
    installation.spawn("beat", [sys.executable, "-m", "celery", "-A", "tasks", "beat", "-l", "INFO", "-s", beat])
    web_port = installation.serve("web", "config.wsgi", workers=args.web_workers, threads=args.threads)
    base = f"http://127.0.0.1:{web_port}"
    api = Api(base, token)
    wait_for(lambda: _status(api.http, f"{base}/healthz") == 200, timeout=60, what="the web server", interval=0.2)
    model_dir = installation.train_example()
    rds = (model_dir / "iris-rf.rds").read_bytes()
    sample = (model_dir / "sample.csv").read_bytes()
    # Two versions of the same forest (gzip's header holds a time: new bytes).
    live, shadow = (api.upload(gzip.compress(gzip.decompress(rds), mtime=n), sample) for n in (1, 2))
    api.deploy(live)

    auth = {"Authorization": f"Token {token}", "Content-Type": "text/csv"}
    call = Request("live", "POST", f"/api/v1/endpoints/{NAME}/invocations", ROW, auth, pause=args.pause)
    api.start_shadow(shadow)
    phases: dict[str, list[Call]] = {"without": [], "with": []}
    ratios = []
    load = [os.getloadavg()[0]]
    for number in range(args.rounds):
        measured = {}
        for phase in ("without", "with") if number % 2 == 0 else ("with", "without"):
            measured[phase] = measure(web_port, args, call, copies=phase == "with")
            phases[phase] += measured[phase]
        ratios.append(p50_ms(measured["with"]) / p50_ms(measured["without"]))
        load.append(os.getloadavg()[0])
    stopped = api.stop_shadow()
    report(phases, stopped, ratios, args, load)
    return 0


def measure(port: int, args: argparse.Namespace, call: Request, *, copies: bool) -> list[Call]:
    # Django is set up by now (api_token).
    from deployer.models import Endpoint
    from deployer.targets.base import ROUTE_CACHE_SECONDS

    endpoint = Endpoint.objects.get(name=NAME)
    route = {**endpoint.shadow_runtime, "sample_percent": 100 if copies else 0}
    Endpoint.objects.filter(pk=endpoint.pk).update(shadow_runtime=route)
    # Every web process's cached route has it by now.
    time.sleep(ROUTE_CACHE_SECONDS + 0.5)
    # Keep-alive connections, as a client calling an endpoint steadily holds them.
    with TrafficClients(port, args.clients, lambda client, sequence: call) as traffic:
        time.sleep(args.seconds)
        return traffic.stop()


def p50_ms(calls: list[Call]) -> float:
    return percentile([(call.finished - call.started) * 1000 for call in calls if call.ok], 0.5)


class Api:
    def __init__(self, base: str, token: str) -> None:
        self.base = base
        self.http = urllib3.PoolManager(maxsize=4)
        self.auth = {"Authorization": f"Token {token}"}

    def get(self, path: str) -> dict[str, Any]:
        return dict(json.loads(self.http.request("GET", f"{self.base}{path}", headers=self.auth).data))

    def post(self, path: str, body: dict[str, Any] | None = None, expect: int = 202) -> dict[str, Any]:
        headers = {**self.auth, "Content-Type": "application/json"}
        answer = self.http.request("POST", f"{self.base}{path}", headers=headers, body=json.dumps(body or {}))
        assert answer.status == expect, answer.data
        return dict(json.loads(answer.data))

    def upload(self, rds: bytes, sample: bytes) -> int:
        fields: dict[str, Any] = {
            "name": NAME,
            "file": ("iris-rf.rds", rds),
            "sample": ("sample.csv", sample, "text/csv"),
        }
        upload = self.http.request("POST", f"{self.base}/api/v1/models/", headers=self.auth, fields=fields)
        assert upload.status == 201, upload.data
        model_id = int(json.loads(upload.data)["id"])
        wait_for(
            lambda: self.get(f"/api/v1/models/{model_id}/")["status"] == "ready",
            timeout=180,
            what="the inspection",
            interval=0.2,
        )
        return model_id

    def deploy(self, model_id: int) -> None:
        # A throttle no client reaches: the benchmark measures serving, not refusing.
        options = {"throttle": {"rate": 10_000, "burst": 5_000}}
        self.post("/api/v1/endpoints/", {"name": NAME, "model": model_id, "options": options})
        wait_for(
            lambda: self.get(f"/api/v1/endpoints/{NAME}")["status"] == "live",
            timeout=300,
            what="the endpoint to go live",
            interval=0.2,
        )

    def start_shadow(self, model_id: int) -> None:
        self.post(f"/api/v1/endpoints/{NAME}/shadow", {"model": model_id, "sample_percent": 100, "duration": "1h"})
        shadow = wait_for(
            lambda: (
                (found := self.get(f"/api/v1/endpoints/{NAME}/shadow"))["status"] in ("running", "failed") and found
            ),
            timeout=300,
            what="the shadow to run",
            interval=0.2,
        )
        assert shadow["status"] == "running", shadow["outcome"]

    def stop_shadow(self) -> dict[str, Any]:
        self.post(f"/api/v1/endpoints/{NAME}/shadow/stop")
        return dict(
            wait_for(
                lambda: (found := self.get(f"/api/v1/endpoints/{NAME}/shadow"))["status"] == "ended" and found,
                timeout=120,
                what="the shadow to end",
                interval=0.2,
            )
        )


def report(
    phases: dict[str, list[Call]],
    shadow: dict[str, Any],
    ratios: list[float],
    args: argparse.Namespace,
    load: list[float],
) -> None:
    seconds = args.rounds * args.seconds
    print(
        f"{args.rounds} rounds of {args.seconds:g} s without and {args.seconds:g} s with a 100% shadow; "
        f"{args.clients} clients pausing {args.pause * 1000:.0f} ms between calls; gunicorn {args.web_workers} x "
        f"{args.threads} threads; load average {' -> '.join(f'{value:.1f}' for value in load)} ({os.cpu_count()} CPUs)"
    )
    print(f"{'phase':8} {'calls':>7} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    p50 = {}
    for name, calls in phases.items():
        times = [(call.finished - call.started) * 1000 for call in calls if call.ok]
        p50[name] = percentile(times, 0.5)
        errors = sum(not call.ok for call in calls)
        print(
            f"{name:8} {len(calls):7} {len(calls) / seconds:7.1f} {p50[name]:8.2f} "
            f"{percentile(times, 0.99):8.2f} {errors:7}"
        )
    print(
        f"shadow copies stored: {shadow['copies_sent']}, dropped: {shadow['copies_dropped']} "
        f"(of {len(phases['with'])} calls with copies)"
    )
    print(f"p50 ratios (with / without) per round: {' '.join(f'{ratio:.2f}' for ratio in ratios)}")
    print(f"median of the rounds' ratios: {statistics.median(ratios):.2f}")
    ratio = p50["with"] / p50["without"] if p50["without"] else 0.0
    met = ratio <= GOAL_P50_RATIO
    print(
        f"p50 with the shadow: {ratio:.2f} x without ({(ratio - 1) * 100:+.1f}%; goal within "
        f"{(GOAL_P50_RATIO - 1) * 100:.0f}%): {'met' if met else 'NOT met'}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
