"""Deploy pipeline benchmark: upload-to-live time, and what the routes add per request.

    .venv/bin/python benchmarks/pipeline_bench.py [--requests 2000] [--web-workers 2] [--wrk-seconds 4]

Starts a throwaway installation (Redis, a Celery worker and gunicorn configured as
`make run` does, on a temporary data directory), trains the example model
(examples/iris/train.R) and measures over HTTP:

1. upload-to-live: POST /api/v1/models/ -> inspected (ready) -> POST /api/v1/endpoints/
   -> live, for the example model on the local target (goal <= 10 s);
2. per-request latency of a one-row CSV prediction, interleaved on keep-alive
   connections: the R runtime directly (its container's Unix socket, as the gateway
   reaches it), a bare WSGI proxy under the same gunicorn
   settings (the floor any Python proxy pays on this machine; it writes to the runtime in
   one send, as rdeploy does), POST
   /api/v1/endpoints/<name>/invocations (token auth) and POST /e/<name>/invocations
   (x-api-key + Redis throttle), the latter also through Django's full request handling
   without the prediction fast path (the baseline), and what each adds at the median
   over the direct call (goal <= 1 ms): interleaved (requests spaced out, each route in
   turn) and sustained (wrk sending back to back on one keep-alive connection; wrk speaks
   TCP only, so the direct call's sustained figure comes from the same one-send client as
   the interleaved ones, sending back to back).
"""

from __future__ import annotations

import argparse
import http.client as http_client
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import urllib3
from wrk import post_script, run_wrk

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the repository root: testsupport/ serves tests and benchmarks alike
from testsupport.installation import BenchmarkInstallation, celery_worker_command  # noqa: E402
from testsupport.waiting import wait_for  # noqa: E402

ROW = b"Sepal.Length,Sepal.Width,Petal.Length,Petal.Width\n5.1,3.5,1.4,0.2\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="timed requests per route")
    parser.add_argument("--web-workers", type=int, default=2, help="gunicorn worker processes")
    parser.add_argument("--wrk-seconds", type=int, default=4, help="length of each sustained (wrk) run")
    parser.add_argument("--keep", action="store_true", help="keep the temporary data directory")
    parser.add_argument(
        "--deploy-only", action="store_true", help="measure upload-to-live only (benchmarks/containers_bench.py)"
    )
    args = parser.parse_args()

    with BenchmarkInstallation("pipeline", keep=args.keep, cleanup=remove_containers) as installation:
        return run(installation, args)


def run(installation: BenchmarkInstallation, args: argparse.Namespace) -> int:
    token = installation.api_token("bench")
    installation.spawn("worker", celery_worker_command("-l", "INFO", "-c", "2"))
    # As `make run` serves (scripts/run.sh).
    serve = partial(installation.serve, workers=args.web_workers, threads=8)
    web_port = serve("web", "config.wsgi")
    base = f"http://127.0.0.1:{web_port}"
    # The same Django without the prediction fast path (deployer/api/fast_path.py), as
    # the baseline the fast path is measured against.
    django_only_port = serve("web-django-only", "config.wsgi:django_application")
    http = urllib3.PoolManager(maxsize=4)
    auth = {"Authorization": f"Token {token}"}
    wait_for(lambda: _status(http, f"{base}/healthz") == 200, timeout=60, what="the web server", interval=0.2)
    model_dir = installation.train_example()
    report: dict[str, Any] = {}
    name = deploy(http, base, auth, model_dir, report)
    if args.deploy_only:
        report.pop("api_key", None)
        print(json.dumps(report, indent=2))
        return 0

    def spawn_floor(runtime_socket: str) -> int:
        (installation.data_dir / "bare_proxy.py").write_text(BARE_PROXY)
        os.environ["RUNTIME_SOCKET"] = runtime_socket
        return serve("bare", "bare_proxy:app", options=("--chdir", str(installation.data_dir)))

    wait_for(
        lambda: _status(http, f"http://127.0.0.1:{django_only_port}/healthz") == 200,
        timeout=60,
        what="Django only",
        interval=0.2,
    )
    measure(http, base, auth, name, report, args.requests, spawn_floor, django_only_port, args.wrk_seconds)
    print(json.dumps(report, indent=2))
    delete = http.request("DELETE", f"{base}/api/v1/endpoints/{name}/", headers=auth)
    assert delete.status == 202, delete.data
    wait_for(
        lambda: _endpoint(http, base, auth, name)["status"] == "deleted",
        timeout=60,
        what="the endpoint to be deleted",
        interval=0.02,
    )
    return 0


def remove_containers() -> None:
    """Whatever runtime or inspection container of this run is left (a run that failed
    half-way): containers outlive the processes that started them."""
    from deployer.integrations.containers import cli

    for name in cli.container_names():
        cli.remove(name)


def _status(http: urllib3.PoolManager, url: str) -> int:
    try:
        return int(http.request("GET", url, retries=False).status)
    except urllib3.exceptions.HTTPError:
        return 0


def _endpoint(http: urllib3.PoolManager, base: str, auth: dict[str, str], name: str) -> dict[str, Any]:
    return dict(json.loads(http.request("GET", f"{base}/api/v1/endpoints/{name}", headers=auth).data))


def deploy(http: urllib3.PoolManager, base: str, auth: dict[str, str], model_dir: Path, report: dict[str, Any]) -> str:
    name = "iris-bench"
    started = time.perf_counter()
    upload = http.request(
        "POST",
        f"{base}/api/v1/models/",
        headers=auth,
        fields={
            "name": name,
            "file": ("iris-rf.rds", (model_dir / "iris-rf.rds").read_bytes(), "application/octet-stream"),
            "sample": ("sample.csv", (model_dir / "sample.csv").read_bytes(), "text/csv"),
        },
    )
    assert upload.status == 201, upload.data
    model_id = json.loads(upload.data)["id"]

    def inspected() -> bool:
        status = json.loads(http.request("GET", f"{base}/api/v1/models/{model_id}/", headers=auth).data)["status"]
        assert status != "invalid"
        return bool(status == "ready")

    wait_for(inspected, timeout=120, what="the inspection", interval=0.02)
    ready = time.perf_counter()
    create = http.request(
        "POST",
        f"{base}/api/v1/endpoints/",
        headers={**auth, "Content-Type": "application/json"},
        body=json.dumps(
            {"name": name, "model": model_id, "public": True, "options": {"throttle": {"rate": 10000, "burst": 5000}}}
        ),
    )
    assert create.status == 202, create.data
    report["api_key"] = json.loads(create.data)["api_key"]
    wait_for(
        lambda: _endpoint(http, base, auth, name)["status"] == "live",
        timeout=60,
        what="the endpoint to go live",
        interval=0.02,
    )
    live = time.perf_counter()
    steps = _endpoint(http, base, auth, name)["steps"]
    report["upload_to_live_s"] = round(live - started, 2)
    report["upload_and_inspection_s"] = round(ready - started, 2)
    report["create_to_live_s"] = round(live - ready, 2)
    report["steps"] = {step["name"]: step["status"] for step in steps}
    return name


# The floor any Python proxy under gunicorn pays here: a bare WSGI app (no Django, no
# auth) forwarding to the runtime over one keep-alive connection per thread.
BARE_PROXY = """
import http.client, os, socket, threading
local = threading.local()
class OneWrite(http.client.HTTPConnection):
    # HTTP/1.1 on the runtime's Unix socket, headers and body in one send, as rdeploy's
    # gateway does (deployer/integrations/containers/runtime_http.py).
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(os.environ["RUNTIME_SOCKET"])
    def _send_output(self, message_body=None, encode_chunked=False):
        self._buffer.extend((b"", b""))
        head = b"\\r\\n".join(self._buffer)
        del self._buffer[:]
        self.send(head + (message_body or b""))
def app(environ, start_response):
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    if not hasattr(local, "conn"):
        local.conn = OneWrite("localhost")
    headers = {"Content-Type": environ.get("CONTENT_TYPE", "")}
    try:
        local.conn.request("POST", "/invocations", body=body, headers=headers)
        response = local.conn.getresponse()
    except (http.client.RemoteDisconnected, ConnectionError):
        # HAProxy closed the idle connection (15 s): reconnect, as the gateway does.
        local.conn.close()
        local.conn.request("POST", "/invocations", body=body, headers=headers)
        response = local.conn.getresponse()
    data = response.read()
    start_response(f"{response.status} OK", [("Content-Type", response.getheader("Content-Type", "")),
                                             ("Content-Length", str(len(data)))])
    return [data]
"""


def measure(
    http: urllib3.PoolManager,
    base: str,
    auth: dict[str, str],
    name: str,
    report: dict[str, Any],
    requests: int,
    spawn_floor: Callable[[str], int],
    django_only_port: int,
    wrk_seconds: int,
) -> None:
    from deployer.integrations.containers.runtime_http import OneWriteHTTPConnection, UnixHTTPConnection
    from deployer.models import Endpoint

    runtime_socket = str(Endpoint.objects.get(name=name).runtime["socket"])
    web_port = int(base.rsplit(":", 1)[1])
    floor_port = spawn_floor(runtime_socket)
    wait_for(
        lambda: _status(http, f"http://127.0.0.1:{floor_port}/") != 0, timeout=30, what="the bare proxy", interval=0.1
    )
    csv = {"Content-Type": "text/csv"}
    # Clients write headers and body in one send, as wrk and curl do (plain http.client
    # writes them separately, which costs every route a second wake-up of its server).
    connect = partial(OneWriteHTTPConnection, "127.0.0.1")
    routes: dict[str, tuple[http_client.HTTPConnection, str, dict[str, str]]] = {
        "direct": (UnixHTTPConnection(runtime_socket, timeout=30), "/invocations", csv),
        "bare_proxy": (connect(floor_port), "/invocations", csv),
        "invocations_route": (
            connect(web_port),
            f"/api/v1/endpoints/{name}/invocations",
            {**csv, **auth},
        ),
        "public_route": (
            connect(web_port),
            f"/e/{name}/invocations",
            {**csv, "x-api-key": report["api_key"]},
        ),
        "public_route_without_fast_path": (
            connect(django_only_port),
            f"/e/{name}/invocations",
            {**csv, "x-api-key": report.pop("api_key")},
        ),
    }
    timings: dict[str, list[float]] = {route: [] for route in routes}
    for round_ in range(requests + 100):
        for route, (conn, path, headers) in routes.items():
            started = time.perf_counter()
            conn.request("POST", path, body=ROW, headers=headers)
            response = conn.getresponse()
            data = response.read()
            elapsed = (time.perf_counter() - started) * 1000
            assert response.status == 200, (route, response.status, data)
            if round_ >= 100:  # the first 100 rounds warm up connections and caches
                timings[route].append(elapsed)
    report["requests_per_route"] = requests
    for route, values in timings.items():
        values.sort()
        report[f"{route}_ms"] = {
            "p50": round(statistics.median(values), 3),
            "p90": round(values[int(len(values) * 0.9)], 3),
            "p99": round(values[int(len(values) * 0.99)], 3),
        }
    direct = report["direct_ms"]["p50"]
    for route in ("bare_proxy", "invocations_route", "public_route", "public_route_without_fast_path"):
        report[f"{route}_adds_ms_p50"] = round(report[f"{route}_ms"]["p50"] - direct, 3)

    # Sustained: one client sending back to back (wrk, one keep-alive connection), each
    # route in turn, twice; the interleaved figures above are for requests spaced out.
    body = Path(tempfile.mkstemp(suffix=".csv")[1])
    body.write_bytes(ROW)
    sustained: dict[str, list[float]] = {route: [] for route in routes}
    for _ in range(2):
        for route, (conn, path, headers) in routes.items():
            if route == "direct":
                # A connection of its own: HAProxy closes one idle for 15 s, as this one was.
                fresh = UnixHTTPConnection(runtime_socket, timeout=30)
                sustained[route].append(back_to_back_p50(fresh, path, headers, wrk_seconds))
                fresh.close()
                continue
            lua = post_script(body.with_suffix(".lua"), body, headers)
            result = run_wrk(f"http://127.0.0.1:{conn.port}{path}", lua, connections=1, seconds=wrk_seconds)
            assert not result["errors"], f"{route}: {result['output']}"
            sustained[route].append(result["p50"])
    best = {route: min(values) for route, values in sustained.items()}
    report["sustained_p50_ms"] = {route: round(value, 3) for route, value in best.items()}
    for route in ("bare_proxy", "invocations_route", "public_route", "public_route_without_fast_path"):
        report[f"sustained_{route}_adds_ms_p50"] = round(best[route] - best["direct"], 3)


def back_to_back_p50(conn: http_client.HTTPConnection, path: str, headers: dict[str, str], seconds: int) -> float:
    """The median of requests sent back to back on ``conn`` for ``seconds``, in ms."""
    values = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.perf_counter()
        conn.request("POST", path, body=ROW, headers=headers)
        response = conn.getresponse()
        response.read()
        values.append((time.perf_counter() - started) * 1000)
    return statistics.median(values)


if __name__ == "__main__":
    sys.exit(main())
