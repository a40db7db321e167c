"""The serving runtime end to end: real R models, the real `serve`, HTTP over loopback."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

MODEL_CASES = ["lm", "glm_binomial", "randomforest", "ranger", "rpart", "svm", "bundle_log_dose"]


def csv_body(rows: list[dict[str, Any]], header: bool = True) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if header:
        writer.writerow(rows[0].keys())
    for row in rows:
        writer.writerow(repr(v) if isinstance(v, float) else v for v in row.values())
    return out.getvalue()


def bodies(rows: list[dict[str, Any]]) -> dict[str, tuple[str, str]]:
    """Every accepted encoding of the same rows: name -> (body, content type)."""
    columns = {key: [row[key] for row in rows] for key in rows[0]}
    return {
        "csv": (csv_body(rows), "text/csv"),
        "csv_without_header": (csv_body(rows, header=False), "text/csv; charset=utf-8"),
        "json_records": (json.dumps(rows), "application/json"),
        "json_instances": (json.dumps({"instances": rows}), "application/json"),
        "json_columns": (json.dumps(columns), "application/json"),
    }


def assert_same_predictions(actual: list[Any], wanted: list[Any]) -> None:
    assert len(actual) == len(wanted)
    for got, want in zip(actual, wanted, strict=True):
        if isinstance(want, float | int) and not isinstance(want, bool):
            assert math.isclose(got, want, rel_tol=1e-12, abs_tol=1e-12), (actual, wanted)
        else:
            assert got == want, (actual, wanted)


@pytest.mark.parametrize("encoding", ["csv", "csv_without_header", "json_records", "json_instances", "json_columns"])
@pytest.mark.parametrize("case", MODEL_CASES)
def test_predictions_match_r_predict_for_every_input_shape(
    served: Callable, expected: Callable, case: str, encoding: str
) -> None:
    want = expected(case)
    body, content_type = bodies(want["rows"])[encoding]
    response = served(case).invoke(body, content_type)
    assert response.status == 200, response.body
    assert response.headers["content-type"] == "application/json"
    assert_same_predictions(response.json()["predictions"], want["predictions"])


@pytest.mark.parametrize("case", ["lm", "randomforest"])
def test_accept_text_csv_answers_one_prediction_per_line(served: Callable, expected: Callable, case: str) -> None:
    want = expected(case)
    response = served(case).invoke(csv_body(want["rows"]), "text/csv", Accept="text/csv")
    assert response.status == 200
    assert response.headers["content-type"] == "text/csv"
    lines = response.body.decode().splitlines()
    values = [float(v) for v in lines] if case == "lm" else lines
    assert_same_predictions(values, want["predictions"])


def test_class_probabilities_on_request_through_sagemaker_custom_attributes(
    served: Callable, expected: Callable
) -> None:
    want = expected("randomforest")
    response = served("randomforest").invoke(
        json.dumps(want["rows"]), "application/json", X_Amzn_SageMaker_Custom_Attributes="type=prob"
    )
    assert response.status == 200
    for got, wanted in zip(response.json()["predictions"], want["probabilities"], strict=True):
        assert got.keys() == wanted.keys()
        assert all(math.isclose(got[k], wanted[k]) for k in wanted)


def test_ping_answers_200_with_an_empty_body(served: Callable) -> None:
    response = served("lm").request("GET", "/ping")
    assert (response.status, response.body) == (200, b"")


def test_every_request_is_logged_with_method_path_status_and_duration(served: Callable) -> None:
    server = served("lm")
    server.request("GET", "/ping")
    server.invoke("nonsense", "text/plain")
    time.sleep(0.2)
    lines = server.log().splitlines()
    assert any(" GET /ping 200 " in line and " ms" in line for line in lines)
    assert any(" POST /invocations 415 " in line for line in lines)


# ---- errors -------------------------------------------------------------------------------------------------------


def assert_error(response: Any, status: int, *words: str) -> None:
    assert response.status == status, response.body
    assert response.headers["content-type"] == "application/json"
    message = response.json()["error"]
    for word in words:
        assert word in message


def assert_still_serving(server: Any, expected_predictions: list[Any], rows: list[dict[str, Any]]) -> None:
    assert server.request("GET", "/ping").status == 200
    response = server.invoke(csv_body(rows), "text/csv")
    assert response.status == 200
    assert_same_predictions(response.json()["predictions"], expected_predictions)


@pytest.mark.parametrize(
    ("body", "content_type", "words"),
    [
        ("wt,hp\n2.6\n", "text/csv", ["row 2", "expected 2"]),
        ("wt\n2.6\n", "text/csv", ["missing columns: hp"]),
        ('[{"wt": 2.6}]', "application/json", ["missing columns: hp"]),
        ('[{"wt": 2.6, "hp": "fast"}]', "application/json", ["hp", "numbers", "fast"]),
        ('{"wt": [1, 2], "hp": [1]}', "application/json", ["different lengths"]),
        ("[{", "application/json", ["malformed JSON"]),
        ("", "text/csv", ["empty"]),
    ],
)
def test_malformed_input_is_a_400_naming_the_problem(
    served: Callable, expected: Callable, body: str, content_type: str, words: list[str]
) -> None:
    server = served("lm")
    assert_error(server.invoke(body, content_type), 400, *words)
    assert_still_serving(server, expected("lm")["predictions"], expected("lm")["rows"])


def test_an_unknown_factor_level_is_a_400_listing_the_known_ones(served: Callable) -> None:
    response = served("glm_binomial").invoke('[{"x": 1, "group": "extreme"}]', "application/json")
    assert_error(response, 400, "group", "extreme", "low, mid, high")


def test_an_unsupported_content_type_is_a_415(served: Callable, expected: Callable) -> None:
    server = served("lm")
    assert_error(server.invoke("wt=1", "application/x-www-form-urlencoded"), 415, "text/csv or application/json")
    assert_still_serving(server, expected("lm")["predictions"], expected("lm")["rows"])


def test_a_body_above_the_limit_is_a_413(models: Path, start_server: Callable, expected: Callable) -> None:
    server = start_server(models / "lm", RDEPLOY_MAX_BODY="1000")
    big = "wt,hp\n" + "2.6,110\n" * 200
    assert_error(server.invoke(big, "text/csv"), 413, "limit of 1000 bytes")
    assert_still_serving(server, expected("lm")["predictions"], expected("lm")["rows"])


def test_a_failing_predict_is_a_500_and_the_server_keeps_serving(served: Callable) -> None:
    server = served("failing")
    assert_error(server.invoke("wt\n2.6\n", "text/csv"), 500, "the model exploded")
    assert_error(server.invoke("wt\n2.6\n", "text/csv"), 500, "the model exploded")
    assert server.request("GET", "/ping").status == 200


def test_probabilities_from_a_regression_model_are_a_400(served: Callable) -> None:
    response = served("ranger").invoke(
        '[{"cyl": 4}]', "application/json", X_Amzn_SageMaker_Custom_Attributes="type=prob"
    )
    assert response.status == 400


def test_unknown_routes_are_404(served: Callable) -> None:
    assert served("lm").request("GET", "/nope").status == 404


# ---- lifecycle and concurrency ------------------------------------------------------------------------------------


def test_ping_is_503_while_the_model_loads_then_200(models: Path, start_server: Callable) -> None:
    server = start_server(models / "slow_load", wait=False, RDEPLOY_TEST_SLEEP="4")
    statuses: list[int] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and 200 not in statuses:
        with contextlib.suppress(OSError):  # not listening yet
            statuses.append(server.request("GET", "/ping", timeout=2).status)
        time.sleep(0.1)
    assert 503 in statuses
    assert statuses[-1] == 200


def test_ping_is_answered_quickly_while_long_predictions_run(
    models: Path, start_server: Callable, tmp_path: Path
) -> None:
    server = start_server(
        models / "slow", RDEPLOY_MAX_WORKERS="1", RDEPLOY_TEST_SLEEP="10", RDEPLOY_TEST_TRACE_DIR=str(tmp_path)
    )
    busy = [threading.Thread(target=server.invoke, args=("wt\n2.6\n", "text/csv")) for _ in range(2)]
    for thread in busy:
        thread.start()
    time.sleep(0.5)
    for _ in range(5):
        assert server.request("GET", "/ping", timeout=5).status == 200
    # Each prediction records itself when it ends: all five pings were answered while the
    # first prediction (10 s) still ran, not queued behind it.
    assert not list(tmp_path.iterdir())
    for thread in busy:
        thread.join()


def test_64_simultaneous_connections_run_at_most_max_workers_predictions_at_once(
    models: Path, start_server: Callable, tmp_path: Path
) -> None:
    server = start_server(
        models / "slow", RDEPLOY_MAX_WORKERS="2", RDEPLOY_TEST_SLEEP="0.25", RDEPLOY_TEST_TRACE_DIR=str(tmp_path)
    )
    statuses: list[int] = []

    def call() -> None:
        statuses.append(server.invoke("wt\n2.6\n", "text/csv").status)

    threads = [threading.Thread(target=call) for _ in range(64)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    assert server.request("GET", "/ping", timeout=5).status == 200
    # Answered while most predictions (64 x 0.25 s, two at a time) were still queued.
    assert len(list(tmp_path.iterdir())) < 64
    for thread in threads:
        thread.join(timeout=60)
    assert statuses == [200] * 64

    spans = [tuple(map(float, p.read_text().split())) for p in tmp_path.iterdir()]
    assert len(spans) == 64
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    assert peak <= 2

    # R forks one child per connection from HAProxy, and HAProxy holds at most
    # max_workers of them for predictions and 4 for /ping.
    r_processes = [pid for pid in group_processes(server.process.pid) if process_name(pid) == "R"]
    assert len(r_processes) <= 1 + 2 + 4


def process_name(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


def group_processes(serve_pid: int) -> list[int]:
    """Processes of serve's R server: those in the session serve started (setsid) plus serve itself."""
    output = subprocess.run(["ps", "-eo", "pid=,ppid=,sid="], capture_output=True, text=True, check=True).stdout
    rows = [tuple(int(v) for v in line.split()) for line in output.splitlines()]
    server_pids = {pid for pid, ppid, _ in rows if ppid == serve_pid}
    sessions = {sid for pid, _, sid in rows if pid in server_pids}
    return [pid for pid, _, sid in rows if sid in sessions or pid == serve_pid]


def test_sigterm_stops_serve_and_every_child(models: Path, start_server: Callable) -> None:
    server = start_server(models / "lm")
    # An open keep-alive connection: its Rserve child must go too.
    keep_alive = socket.create_connection(("127.0.0.1", server.port))
    keep_alive.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b"200" in keep_alive.recv(1000)
    processes = group_processes(server.process.pid)
    assert len(processes) >= 4  # serve, HAProxy, the R server, the child R forked for HAProxy's connection

    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=15) == 0
    keep_alive.close()
    time.sleep(0.5)
    for pid in processes:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=2)
