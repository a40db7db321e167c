"""The import-linter contracts of pyproject.toml (`lint-imports` in `make test`): the tree
keeps them, and a copy of it with one forbidden import breaks the contract that forbids it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BASE_DIR = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
ROOT_PACKAGES = ("deployer", "webui", "tasks", "config")


def lint_imports(directory: Path, *contracts: str) -> subprocess.CompletedProcess[str]:
    arguments = [str(LINT_IMPORTS), "--no-cache", "--no-logo"]
    for contract in contracts:
        arguments += ["--contract", contract]
    return subprocess.run(
        arguments,
        cwd=directory,
        env={**os.environ, "PYTHONPATH": str(directory)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the packages the contracts cover, with the project's configuration."""
    copy = tmp_path_factory.mktemp("tree")
    for package in ROOT_PACKAGES:
        shutil.copytree(BASE_DIR / package, copy / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(BASE_DIR / "pyproject.toml", copy / "pyproject.toml")
    return copy


def test_the_tree_keeps_every_contract() -> None:
    result = lint_imports(BASE_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "source", "contract", "reported"),
    [
        (
            "deployer/integrations/reaches_up.py",
            "from deployer.services import endpoints\n",
            "layers",
            "deployer.integrations is not allowed to import deployer.services",
        ),
        (
            "deployer/targets/reaches_up.py",
            "from deployer.api import endpoints\n",
            "layers",
            "deployer.targets is not allowed to import deployer.api",
        ),
        (
            "deployer/services/calls_a_task.py",
            "import tasks.inspection\n",
            "layers",
            "deployer.services is not allowed to import tasks",
        ),
        (
            "deployer/targets/local/__init__.py"
            if (BASE_DIR / "deployer/targets/local").is_dir()
            else "deployer/targets/local.py",
            "from deployer.targets import sagemaker\n",
            "targets",
            "deployer.targets.sagemaker",
        ),
        (
            "deployer/services/calls_aws.py",
            "import botocore.exceptions\n",
            "aws",
            "deployer.services.calls_aws -> botocore",
        ),
    ],
)
def test_a_forbidden_import_breaks_its_contract(
    tree: Path, module: str, source: str, contract: str, reported: str
) -> None:
    path = tree / module
    original = path.read_text() if path.exists() else None
    try:
        path.write_text((original or "") + source)
        result = lint_imports(tree, contract)
    finally:
        if original is None:
            path.unlink()
        else:
            path.write_text(original)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "BROKEN" in result.stdout
    assert reported in result.stdout, result.stdout
