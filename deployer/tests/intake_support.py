"""Shared helpers for the model-intake tests: real models trained by R at test time
(deployer/tests/train_models.R) and hand-built archives, good and hostile."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

TRAIN_SCRIPT = Path(__file__).resolve().parent / "train_models.R"


@pytest.fixture(scope="session")
def trained_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """<dir>/<case>/model.rds (+ predict.R) and expected.json with rows and R's predictions,
    for lm, glm_binomial, randomforest, ranger, rpart, svm and bundle_log_dose."""
    out = tmp_path_factory.mktemp("trained-models")
    subprocess.run([settings.RSCRIPT, "--vanilla", str(TRAIN_SCRIPT), str(out)], check=True, capture_output=True)
    return out


def expected(case_dir: Path) -> dict[str, Any]:
    return dict(json.loads((case_dir / "expected.json").read_text()))


def rows_as_csv(rows: list[dict[str, Any]]) -> bytes:
    header = list(rows[0])
    lines = [",".join(header)] + [",".join(str(row[name]) for name in header) for row in rows]
    return ("\n".join(lines) + "\n").encode()


def tar_gz(members: dict[str, bytes], *, extra: list[tarfile.TarInfo] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for info in extra or []:
            archive.addfile(info)
    return buffer.getvalue()


def zip_bytes(members: dict[str, bytes], *, modes: dict[str, int] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            if modes and name in modes:
                info.external_attr = modes[name] << 16
            archive.writestr(info, data)
    return buffer.getvalue()
