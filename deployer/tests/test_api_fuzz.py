"""The REST API against its own OpenAPI schema (issue 12): schemathesis generates requests
for every operation of `/api/schema/` and sends them, with a real API token, to the real
WSGI application in this process. No answer may be a server error, and every answer must
be documented: its status code listed for the operation, its body valid against the
schema.

Each generated request is sent twice: as generated (random ids and names, mostly absent)
and with the path pointing at objects the token's user owns, so the views' real work
(create, update, roll back, delete) meets fuzzed bodies and query strings too. Background
work is recorded, not run (deployer/tests/conftest.py): a created endpoint stays queued.

Bounded and repeatable: a fixed number of examples per operation, derandomized, and no
Hypothesis database written into the tree.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis
import hypothesis.configuration
import pytest
import schemathesis
from django.conf import settings
from django.contrib.auth.models import User
from django.core import signals
from django.db import close_old_connections
from django.test import Client

from config.wsgi import application
from deployer.models import ApiToken, Deployment, DeploymentStep, Endpoint, LogLine, ModelVersion
from deployer.services.tokens import api_token_create
from testsupport.factories import make_endpoint, make_model_version

EXAMPLES_PER_OPERATION = 20

# Hypothesis's caches go to the session's throwaway data directory, not a .hypothesis/ in the tree.
hypothesis.configuration.set_hypothesis_home_dir(Path(settings.DATA_DIR) / "hypothesis")


# Loaded once, when the module is collected: one test per operation, each in its own
# database transaction and under the per-test time limit.
schema = schemathesis.openapi.from_wsgi("/api/schema/", application)


@pytest.fixture
def wsgi_keeps_the_test_transaction(db: None) -> Iterator[None]:
    # As Django's test client does: the WSGI handler's signals would otherwise close the
    # test's database connection (and its transaction) after each request.
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


def _owned_path_parameters(owner: User, path: str) -> dict[str, Any]:
    """Path parameters naming objects the owner has (re-made when an example deleted one)."""
    model = ModelVersion.objects.filter(owner=owner).first() or make_model_version(owner, status="ready")
    if not Endpoint.objects.filter(owner=owner, name="bare").exists():
        # Nothing deployed yet: the list's answers hold an endpoint without model or deployment.
        make_endpoint(owner, "bare", status=Endpoint.Status.PENDING)
    endpoint = Endpoint.objects.filter(owner=owner, name="fuzzed").exclude(status=Endpoint.Status.DELETED).first()
    token = ApiToken.objects.filter(user=owner, revoked_at__isnull=True, name="fuzzed").first()
    token = token or api_token_create(user=owner, name="fuzzed").token
    return {
        "id": token.pk if path.startswith("/api/v1/tokens/") else model.pk,
        "name": (endpoint or _live_endpoint(owner, model)).name,
    }


def _live_endpoint(owner: User, model: ModelVersion) -> Endpoint:
    """A public endpoint serving `model`, with a finished deployment, a step and a log line,
    and an earlier version to roll back to: every field of the answers filled in."""
    endpoint = make_endpoint(
        owner,
        "fuzzed",
        model_version=model,
        previous_model_version=make_model_version(owner, status="ready"),
        status=Endpoint.Status.LIVE,
        public=True,
    )
    deployment = Deployment.objects.create(
        endpoint=endpoint, model_version=model, kind=Deployment.Kind.CREATE, status=Deployment.Status.SUCCEEDED
    )
    DeploymentStep.objects.create(deployment=deployment, position=0, name="start runtime", status="succeeded")
    LogLine.objects.create(endpoint=endpoint, deployment=deployment, source="pipeline", message="started")
    endpoint.current_deployment = deployment
    endpoint.save()
    return endpoint


# Checks that do not fit a REST API over objects with state: a schema-valid request may
# name a model that does not exist or an endpoint mid-deployment (400, 409), and DRF's
# fields accept what they can coerce ("1" for 1, 0 for "0") by design.
EXCLUDED_CHECKS = [schemathesis.checks.positive_data_acceptance, schemathesis.checks.negative_data_rejection]


@schema.parametrize()
@hypothesis.settings(
    max_examples=EXAMPLES_PER_OPERATION,
    derandomize=True,
    database=None,
    # No timing: a loaded machine is slow. The fixtures are per test on purpose (one database
    # transaction for all examples), and generation may be slow there too.
    deadline=None,
    suppress_health_check=list(hypothesis.HealthCheck),
)
@pytest.mark.usefixtures("wsgi_keeps_the_test_transaction")
def test_every_answer_is_documented_and_no_server_error(case: schemathesis.Case, owner: User) -> None:
    # A fresh token each time: an example may have revoked the previous one.
    headers = {"Authorization": f"Token {api_token_create(user=owner).secret}"}
    _owned_path_parameters(owner, case.operation.path)  # lists hold the owner's objects too
    case.call_and_validate(headers=headers, excluded_checks=EXCLUDED_CHECKS)
    if case.path_parameters:
        owned = _owned_path_parameters(owner, case.operation.path)
        case.path_parameters = {key: owned.get(key, value) for key, value in case.path_parameters.items()}
        case.call_and_validate(headers=headers, excluded_checks=EXCLUDED_CHECKS)


def test_unknown_api_paths_answer_the_apis_json_404(client: Client) -> None:
    """A path no route matches (a name with other characters) gets the API's {detail} 404,
    not Django's HTML page; the dashboard's unknown paths keep the page."""
    api = client.get("/api/v1/endpoints/Not_A_Name/")
    assert (api.status_code, api["Content-Type"], api.json()) == (404, "application/json", {"detail": "Not found."})
    page = client.get("/no-such-page/")
    assert (page.status_code, page["Content-Type"].split(";")[0]) == (404, "text/html")
