"""Pytest plugin: every model the tests use, trained by real R once per test session.

testsupport/train_models.R writes one directory per case (see its header); the root
conftest.py loads this plugin so the runtime tests (container_templates/tests) and the
deployer tests share one training run. Nothing here needs Django, so the runtime tests
still run with `pytest -p no:django container_templates`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

TRAIN_SCRIPT = Path(__file__).resolve().parent / "train_models.R"


def expected(case_dir: Path) -> dict[str, Any]:
    """A case's expected.json: its input rows and R's own predictions for them."""
    return dict(json.loads((case_dir / "expected.json").read_text()))


def rows_csv(rows: list[dict[str, Any]]) -> bytes:
    """Rows of expected.json as the CSV a client would send, columns in the rows' order."""
    header = list(rows[0])
    lines = [",".join(header)] + [",".join(str(row[name]) for name in header) for row in rows]
    return ("\n".join(lines) + "\n").encode()


def train_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's trained models, training them on the first call."""
    out = tmp_path_factory.getbasetemp() / "r-models"
    done = out / ".trained"
    if not done.exists():
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        # The same executable settings.RSCRIPT names, read without loading Django.
        rscript = os.environ.get("RDEPLOY_RSCRIPT") or "Rscript"
        result = subprocess.run(
            [rscript, "--vanilla", str(TRAIN_SCRIPT), str(out)], capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"{TRAIN_SCRIPT.name} failed ({result.returncode}):\n{result.stderr}")
        done.touch()
    return out


@pytest.fixture(scope="session")
def r_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """<dir>/<case>/ for lm, glm_binomial, randomforest, ranger, rpart, svm, svm_no_prob,
    ranger_no_prob, bundle_log_dose, slow, slow_load and failing (model.rds, maybe predict.R
    and rdeploy.json, expected.json with R's own predictions and a classifier's levels) and
    <dir>/iris_versions/ (v1.rds, v2.rds, expected.json)."""
    return train_models(tmp_path_factory)
