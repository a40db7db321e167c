"""Benchmark of the R serving runtime against plumber and against bare predict(), measured in one run.

Trains a randomForest on iris (200 trees), then measures on this machine:
  - a bare predict() loop on one row, in R (the ceiling for any server);
  - `serve` (container_templates/runtime) and a plumber server of the same shape, driven by wrk with a
    single-row CSV on 1 and on 4 keep-alive connections;
  - a 10,000-row CSV through `serve` against R's own read.csv() + predict() for it.
and prints requests/s, p50, p99 and the ratios the runtime's goals are stated in (issue 3).

Usage: python benchmarks/runtime_bench.py [--seconds 10] [--rounds 1]
With --rounds N every wrk run is repeated N times, interleaved, and the table shows medians: on a shared machine
one run can fall into someone else's burst of work. The load average is printed before and after.
Needs: R with randomForest, plumber, Rserve, jsonlite; haproxy; wrk. Sends traffic to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import http.client
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from wrk import post_script, run_wrk

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the repository root: testsupport/ serves tests and benchmarks alike
from testsupport.ports import PORT_ATTEMPTS, free_port  # noqa: E402

SERVE = Path(__file__).resolve().parent.parent / "container_templates" / "runtime" / "serve"
ROW_CSV = "Sepal.Length,Sepal.Width,Petal.Length,Petal.Width\n5.1,3.5,1.4,0.2\n"

TRAIN_R = """
suppressMessages(library(randomForest))
set.seed(1)
out <- commandArgs(trailingOnly = TRUE)[1]
dir.create(file.path(out, "model"), showWarnings = FALSE)
saveRDS(randomForest(Species ~ ., data = iris, ntree = 200), file.path(out, "model", "model.rds"))
big <- iris[sample(nrow(iris), 10000, replace = TRUE), 1:4]
write.csv(big, file.path(out, "rows10k.csv"), row.names = FALSE)
"""

# Prints two numbers: single-row predict() calls per second, and seconds for read.csv() + predict() of 10k rows.
BARE_R = """
suppressMessages(library(randomForest))
out <- commandArgs(trailingOnly = TRUE)[1]
m <- readRDS(file.path(out, "model", "model.rds"))
row <- read.csv(text = "{row}")
for (i in 1:200) predict(m, row)
n <- 0L; started <- Sys.time()
while (as.numeric(Sys.time() - started, units = "secs") < {seconds}) {{ predict(m, row); n <- n + 1L }}
rate <- n / as.numeric(Sys.time() - started, units = "secs")
text <- readChar(file.path(out, "rows10k.csv"), file.size(file.path(out, "rows10k.csv")))
times <- replicate(5, system.time(predict(m, read.csv(text = text)))[["elapsed"]])
cat(rate, median(times), "\\n")
"""

# The plumber server most R deployments would write: same route, same CSV in, same JSON out.
PLUMBER_R = """
suppressMessages({{ library(plumber); library(randomForest) }})
m <- readRDS("{model}")
pr() |>
  pr_post("/invocations", function(req) list(predictions = as.character(predict(m, read.csv(text = req$postBody))))) |>
  pr_get("/ping", function() "") |>
  pr_run(host = "127.0.0.1", port = {port}, quiet = TRUE)
"""


def http_status(port: int, method: str, path: str, body: bytes | None = None, timeout: float = 120) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers={"Content-Type": "text/csv"})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def wait_for_ping(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if http_status(port, "GET", "/ping", timeout=2) == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"nothing answers /ping on port {port}")


Server = TypeVar("Server")


def serve_on_a_free_port(
    launch: Callable[[int], Server], exited: Callable[[Server], bool], stop: Callable[[Server], None]
) -> tuple[Server, int]:
    """``launch(port)`` on a free port, and its port once it answers /ping. None of these
    servers can bind port 0 and say which it got, so one that exits before answering (its
    port was taken after the pick: HAProxy, httpuv give up) starts again on another free
    port, PORT_ATTEMPTS times."""
    for _ in range(PORT_ATTEMPTS):
        port = free_port()
        server = launch(port)
        deadline = time.monotonic() + 60
        while not exited(server):
            if pings(port):
                return server, port
            if time.monotonic() > deadline:
                stop(server)
                raise TimeoutError(f"nothing answers /ping on port {port}")
            time.sleep(0.2)
        stop(server)
    raise RuntimeError(f"each server exited before answering, on {PORT_ATTEMPTS} free ports (the last: {port})")


def pings(port: int) -> bool:
    try:
        return http_status(port, "GET", "/ping", timeout=2) == 200
    except OSError:
        return False


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median rate (its own p50 and p99), errors if any run had them
    (a non-2xx answer or a broken connection)."""
    middle = sorted(runs, key=lambda r: r["rps"])[len(runs) // 2]
    return {**middle, "errors": max(max(r["errors"], r["socket_errors"]) for r in runs)}


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def bare_predict(work: Path, seconds: int) -> tuple[float, float]:
    script = work / "bare.R"
    script.write_text(BARE_R.format(row=ROW_CSV.replace("\n", "\\n"), seconds=seconds))
    out = subprocess.run(["Rscript", str(script), str(work)], capture_output=True, text=True, check=True).stdout
    rate, big_seconds = out.split()
    return float(rate), float(big_seconds)


def post_seconds(port: int, body: bytes, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        assert http_status(port, "POST", "/invocations", body) == 200
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            command, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def exited(process: subprocess.Popen[bytes]) -> bool:
    return process.poll() is not None


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10, help="length of each wrk run")
    parser.add_argument("--rounds", type=int, default=1, help="wrk runs per server and connection count (median)")
    args = parser.parse_args()
    load_before = load_average()

    with tempfile.TemporaryDirectory(prefix="rdeploy-bench-") as tmp:
        work = Path(tmp)
        (work / "train.R").write_text(TRAIN_R)
        subprocess.run(["Rscript", str(work / "train.R"), str(work)], check=True)
        (work / "row.csv").write_text(ROW_CSV)
        lua = post_script(work / "post.lua", work / "row.csv", {"Content-Type": "text/csv"})

        bare_before, read_predict_10k = bare_predict(work, 5)

        def serve(port: int) -> subprocess.Popen[bytes]:
            env = {
                "RDEPLOY_MODEL_DIR": str(work / "model"),
                "SAGEMAKER_BIND_TO_PORT": str(port),
                "RDEPLOY_BIND": "127.0.0.1",
            }
            return start([str(SERVE)], env, work / "serve.log")

        def plumber_server(port: int) -> subprocess.Popen[bytes]:
            (work / "plumber.R").write_text(PLUMBER_R.format(model=work / "model" / "model.rds", port=port))
            return start(["Rscript", str(work / "plumber.R")], {}, work / "plumber.log")

        ours, ours_port = serve_on_a_free_port(serve, exited, stop)
        try:
            plumber, plumber_port = serve_on_a_free_port(plumber_server, exited, stop)
        except BaseException:
            stop(ours)
            raise
        try:
            runs: dict[str, list[dict[str, Any]]] = {}
            for port in (ours_port, plumber_port):
                run_wrk(f"http://127.0.0.1:{port}/invocations", lua, 1, 2)  # warm up: fork, compile, page in
            for _ in range(args.rounds):
                for name, port in (("serve", ours_port), ("plumber", plumber_port)):
                    url = f"http://127.0.0.1:{port}/invocations"
                    for connections in (1, 4):
                        runs.setdefault(f"{name} c{connections}", []).append(
                            run_wrk(url, lua, connections, args.seconds)
                        )
            results = {name: median_run(r) for name, r in runs.items()}
            big = (work / "rows10k.csv").read_bytes()
            serve_10k = post_seconds(ours_port, big)
        finally:
            stop(ours)
            stop(plumber)
        bare_after, read_predict_10k_after = bare_predict(work, 5)

    bare = (bare_before + bare_after) / 2
    read_predict = min(read_predict_10k, read_predict_10k_after)
    print(f"{'server':<14}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
    for name, r in results.items():
        flag = "  (errors!)" if r["errors"] else ""
        print(f"{name:<14}{r['rps']:>10.0f}{r['p50']:>10.2f}{r['p99']:>10.2f}{flag}")
    print(f"bare predict() on one row: {bare:.0f}/s (before {bare_before:.0f}, after {bare_after:.0f})")
    print(f"10,000-row CSV: serve {serve_10k * 1000:.0f} ms, R read.csv + predict {read_predict * 1000:.0f} ms")
    rounds = f"median of {args.rounds} runs of {args.seconds} s" if args.rounds > 1 else f"one run of {args.seconds} s"
    print(f"wrk: {rounds} each; load average before {load_before}, after {load_average()}")

    one, four = results["serve c1"], results["serve c4"]
    goals = [
        ("1 connection >= 1,000 req/s", one["rps"], one["rps"] >= 1000),
        ("1 connection p50 <= 2 ms", one["p50"], one["p50"] <= 2),
        ("1 connection >= 50% of bare predict()", one["rps"] / bare, one["rps"] / bare >= 0.5),
        ("vs plumber, 1 connection (x)", one["rps"] / results["plumber c1"]["rps"], True),
        ("4 connections >= 1.5x one", four["rps"] / one["rps"], four["rps"] / one["rps"] >= 1.5),
        ("10k-row CSV <= 1.5x read.csv+predict", serve_10k / read_predict, serve_10k / read_predict <= 1.5),
    ]
    print("\ngoal                                      value   met")
    for label, value, met in goals:
        print(f"{label:<40}{value:>8.2f}   {'yes' if met else 'NO'}")


if __name__ == "__main__":
    main()
