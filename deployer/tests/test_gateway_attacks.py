"""Hostile models deployed through the pipeline against the gateway in front of local
endpoints: a model answering slowly, never, or too much holds no more of a web process than
its share, and other endpoints keep answering (deployer/services/gateway.py,
deployer/targets/local/, deployer/integrations/containers/runtime_http.py)."""

from __future__ import annotations

import http.client
import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth.models import User

from deployer.integrations.containers import runtime_http
from deployer.models import Deployment, Endpoint
from deployer.services.tokens import api_token_create
from deployer.targets.local.paths import rollout_dir
from deployer.tests.pipeline_support import iris_version
from deployer.tests.test_runtime_attacks import PRELUDE, deploy, healthy_neighbour, hostile_model, predict
from testsupport.r_models import expected, rows_csv
from testsupport.services import WebServer, session_database_url
from testsupport.waiting import wait_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("no_runtime_outlives_the_test"),
]

GREEDY_R = (
    PRELUDE
    + rb"""
load_fn <- function(model_dir) list(dir = model_dir)
predict_fn <- function(model, data) {
  action <- as.character(data$action[1])
  if (action == "sleep") { Sys.sleep(as.numeric(data$seconds[1])); return("slept") }
  if (action == "hold") {
    # Until the test writes "release" into the model's directory (mounted from the host).
    deadline <- Sys.time() + as.numeric(data$seconds[1])
    while (!file.exists(file.path(model$dir, "release")) && Sys.time() < deadline) Sys.sleep(0.05)
    return("held")
  }
  if (action == "big") return(strrep("A", 50 * 1024^2))
  "small"
}
"""
)
# Threads of each web process `make run` starts (docker-compose.yml's web has as many:
# config/tests/test_compose.py).
MAKE_RUN_THREADS = int(re.findall(r"--threads (\d+)", (settings.BASE_DIR / "scripts" / "run.sh").read_text())[0])


@pytest.fixture
def narrow_web_server(django_db_blocker: object) -> Iterator[WebServer]:
    """The real web app in one process of 3 threads, letting one endpoint have 2 of them."""
    server = WebServer(
        session_database_url(),
        Path(settings.DATA_DIR) / "narrow-web.log",
        workers=1,
        threads=3,
        # No waiters: with 3 threads, 2 in progress + 2 queued could take them all.
        env={"RDEPLOY_GATEWAY_MAX_INFLIGHT": "2", "RDEPLOY_GATEWAY_MAX_QUEUED": "0"},
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture
def make_run_web_server(django_db_blocker: object) -> Iterator[WebServer]:
    """One web process with make run's threads and the gateway's default bounds; waiters
    may wait longer than the test lasts, so that how many may wait, not for how long,
    decides how many threads a slow model holds."""
    server = WebServer(
        session_database_url(),
        Path(settings.DATA_DIR) / "make-run-web.log",
        workers=1,
        threads=MAKE_RUN_THREADS,
        env={"RDEPLOY_GATEWAY_QUEUE_MS": "300000"},
    )
    server.start()
    yield server
    server.stop()


def post(server: WebServer, name: str, token: str, body: bytes) -> tuple[int, dict[str, str]]:
    """Status and headers of a token-authenticated prediction over HTTP."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    headers = {"Authorization": f"Token {token}", "Content-Type": "text/csv"}
    try:
        connection.request("POST", f"/api/v1/endpoints/{name}/invocations", body=body, headers=headers)
        response = connection.getresponse()
        response.read()
        return response.status, dict(response.getheaders())
    finally:
        connection.close()


def victim_and_slowpoke(owner: User, colleague: User, iris_models: Path, server: WebServer) -> tuple[str, str, bytes]:
    """The colleague's iris endpoint "victim" and the owner's GREEDY_R endpoint "slowpoke",
    live; the victim's token, the attacker's, and rows the victim answered through ``server``."""
    truth = expected(iris_models)
    assert deploy(colleague, "victim", iris_version(colleague, iris_models, "v1")).status == Deployment.Status.SUCCEEDED
    assert deploy(owner, "slowpoke", hostile_model(owner, iris_models, GREEDY_R, {})).status == (
        Deployment.Status.SUCCEEDED
    )
    victim_token, attacker_token = api_token_create(user=colleague).secret, api_token_create(user=owner).secret
    rows = rows_csv(truth["rows"])
    assert post(server, "victim", victim_token, rows)[0] == 200
    return victim_token, attacker_token, rows


def test_a_slow_model_called_from_every_thread_leaves_a_thread_for_other_endpoints(
    owner: User, colleague: User, iris_models: Path, narrow_web_server: WebServer
) -> None:
    server = narrow_web_server
    victim_token, attacker_token, rows = victim_and_slowpoke(owner, colleague, iris_models, server)
    attacks: list[tuple[int, dict[str, str]]] = []

    def attack() -> None:
        attacks.append(post(server, "slowpoke", attacker_token, b"action,seconds\nsleep,20\n"))

    attackers = [threading.Thread(target=attack) for _ in range(4)]
    for thread in attackers:
        thread.start()
    time.sleep(1.5)

    status, _ = post(server, "victim", victim_token, rows)
    # Answered while the two admitted slow calls (20 s each) are still in progress: the
    # victim was not queued behind them.
    in_progress = sum(thread.is_alive() for thread in attackers)

    for thread in attackers:
        thread.join(60)
    assert status == 200
    assert in_progress >= 2
    refused = [headers for status, headers in attacks if status == 503]
    assert len(refused) == 2  # the endpoint's share is 2 of the 3 threads
    assert all(headers["Retry-After"] == "1" for headers in refused)
    assert sorted(status for status, _ in attacks) == [200, 200, 503, 503]


def test_with_make_runs_threads_and_the_default_bounds_a_slow_model_leaves_threads_to_other_endpoints(
    owner: User, colleague: User, iris_models: Path, make_run_web_server: WebServer
) -> None:
    held = settings.GATEWAY_MAX_INFLIGHT + settings.GATEWAY_MAX_QUEUED
    others = MAKE_RUN_THREADS - held
    assert others >= 1  # the rule the defaults follow (config/settings.py)
    server = make_run_web_server
    victim_token, attacker_token, rows = victim_and_slowpoke(owner, colleague, iris_models, server)
    attacks: list[int] = []
    victims: list[int] = []

    def attack() -> None:
        attacks.append(post(server, "slowpoke", attacker_token, b"action,seconds\nhold,60\n")[0])

    def victim() -> None:
        victims.append(post(server, "victim", victim_token, rows)[0])

    # As many slow calls as the process has threads: those past the endpoint's bounds are
    # refused at once, the others hold their threads (in progress until released, or waiting).
    attackers = [threading.Thread(target=attack) for _ in range(MAKE_RUN_THREADS)]
    for thread in attackers:
        thread.start()
    wait_for(lambda: len(attacks) >= others, timeout=30, what=f"{others} slow calls refused")
    refused_at_once = list(attacks)
    # The other endpoint's calls, all at once on the threads left.
    calls = [threading.Thread(target=victim) for _ in range(others)]
    for thread in calls:
        thread.start()
    for thread in calls:
        thread.join(60)
    still_held = sum(thread.is_alive() for thread in attackers)

    slowpoke = Endpoint.objects.get(name="slowpoke").current_deployment
    assert slowpoke is not None
    (rollout_dir(slowpoke) / "model" / "release").write_bytes(b"")
    for thread in attackers:
        thread.join(120)
    assert refused_at_once == [503] * others
    assert victims == [200] * others
    # Answered while every admitted or waiting slow call still held its thread.
    assert still_held == held
    assert sorted(attacks) == [200] * held + [503] * others


def test_an_answer_too_large_or_too_slow_is_cut_off_and_the_endpoint_serves_on(
    owner: User, iris_models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert deploy(owner, "neighbour", iris_version(owner, iris_models, "v1")).status == Deployment.Status.SUCCEEDED
    assert deploy(owner, "greedy", hostile_model(owner, iris_models, GREEDY_R, {})).status == (
        Deployment.Status.SUCCEEDED
    )

    status, body = predict(owner, "greedy", b"action\nbig\n")  # 50 MiB

    assert status == 502
    limit = runtime_http.MAX_RESPONSE_BYTES
    assert json.loads(body) == {"message": f"The model's answer is larger than {limit} bytes."}

    monkeypatch.setattr(runtime_http, "INVOCATION_SECONDS", 2.0)
    status, body = predict(owner, "greedy", b"action,seconds\nsleep,5\n")

    # The model would answer "slept" after 5 s: the 504 is the 2 s deadline.
    assert status == 504
    assert json.loads(body) == {"message": "The model did not answer within 2 seconds."}
    monkeypatch.undo()
    healthy_neighbour(owner, iris_models)
    # Its connections were dropped, not reused with the rest of an answer in them.
    status, body = predict(owner, "greedy", b"action\nsmall\n")
    assert (status, json.loads(body)) == (200, {"predictions": ["small"]})
