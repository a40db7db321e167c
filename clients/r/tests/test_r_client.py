"""The R package clients/r/rdeploy against the real stack (issue 15): installed from the tree
into a temporary library, its testthat suite run by Rscript with RDEPLOY_URL and RDEPLOY_TOKEN
pointing at gunicorn and a Celery worker on the test database."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from django.contrib.auth.models import User

from deployer.services.tokens import api_token_create
from testsupport.services import CeleryWorker, WebServer

PACKAGE = Path(__file__).resolve().parents[1] / "rdeploy"


@pytest.fixture(scope="module")
def r_library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    library = tmp_path_factory.mktemp("r-library")
    installed = subprocess.run(
        ["R", "CMD", "INSTALL", "--no-test-load", "-l", str(library), str(PACKAGE)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return library


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_r_package_uploads_deploys_predicts_like_local_r_updates_rolls_back_and_deletes(
    owner: User, r_library: Path, web_server: WebServer, celery_worker: CeleryWorker
) -> None:
    env = dict(
        os.environ,
        R_LIBS=str(r_library),
        RDEPLOY_URL=web_server.url,
        RDEPLOY_TOKEN=api_token_create(user=owner).secret,
        NOT_CRAN="true",
    )
    script = (
        "results <- as.data.frame(testthat::test_dir("
        f"'{PACKAGE / 'tests' / 'testthat'}', package = 'rdeploy', load_package = 'installed',"
        " reporter = 'summary', stop_on_failure = FALSE));"
        " cat('\\nRDEPLOY-RESULTS', sum(results$failed), sum(results$error), sum(results$skipped),"
        " sum(results$passed), '\\n'); quit(status = as.integer(sum(results$failed) + sum(results$error) > 0))"
    )
    run = subprocess.run(["Rscript", "-e", script], env=env, capture_output=True, text=True, timeout=280, check=False)
    output = run.stdout + run.stderr
    print(output)  # testthat's reporter, in pytest's report (-rP) and on failure
    assert run.returncode == 0, output + "\nweb server log:\n" + web_server.logfile.read_text()[-6000:]
    failed, errors, skipped, passed = (int(n) for n in output.split("RDEPLOY-RESULTS", 1)[1].split()[:4])
    # Nothing skipped: the live tests saw the server; every expectation ran.
    assert (failed, errors, skipped) == (0, 0, 0), output
    assert passed >= 20, output
