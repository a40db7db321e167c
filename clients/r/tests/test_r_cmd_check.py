"""`R CMD check` on the R package clients/r/rdeploy (issue 15): built from the tree into a
temporary directory and checked offline; its live tests skip themselves without RDEPLOY_URL."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "rdeploy"


def r_cmd(*args: str, cwd: Path, env: dict[str, str]) -> str:
    """Runs `R CMD <args>`, asserts it succeeded, returns what it printed."""
    run = subprocess.run(
        ["R", "CMD", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    return output


@pytest.mark.slow
def test_r_cmd_check_passes_without_errors_warnings_or_notes(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("RDEPLOY_")}
    env.update(
        _R_CHECK_FORCE_SUGGESTS_="false",
        # Nothing that needs the network: no CRAN incoming checks, and any HTTP(S) request
        # goes to a closed local port.
        _R_CHECK_CRAN_INCOMING_="false",
        _R_CHECK_CRAN_INCOMING_REMOTE_="false",
        http_proxy="http://127.0.0.1:9",
        https_proxy="http://127.0.0.1:9",
        R_LIBS_USER=str(tmp_path / "no-user-library"),
    )
    r_cmd("build", "--no-build-vignettes", "--no-manual", str(PACKAGE), cwd=tmp_path, env=env)
    (tarball,) = tmp_path.glob("rdeploy_*.tar.gz")
    output = r_cmd("check", "--no-manual", "--no-build-vignettes", tarball.name, cwd=tmp_path, env=env)
    # The package README explains any NOTE; today there is none.
    assert "Status: OK" in output, output
    # The test suite ran (its live tests skipped: no server is given).
    assert "checking tests" in output, output
    assert "testthat.R" in output, output
