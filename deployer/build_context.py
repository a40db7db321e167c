"""Deterministic Docker build contexts for rdeploy serving images.

One image serves every model that needs the same R version and package set: the
context (Dockerfile, the R runtime, the package list, an optional renv.lock) is
rendered byte for byte the same from the same inputs, and its content hash is
the image tag, so a registry lookup of the tag says whether to build at all.

Plain Python on purpose (no Django): the build integration and the tests import it.
See container_templates/runtime/README.md for how the context is built for real.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "container_templates"

# Dated Posit Package Manager snapshot of CRAN Linux binaries for the Ubuntu
# release under rocker/r-ver 4.4 (jammy). Changing it changes every tag, on purpose.
DEFAULT_PPM_SNAPSHOT = "https://packagemanager.posit.co/cran/__linux__/jammy/2025-02-03"
# Ubuntu jammy's HAProxy series (the runtime needs >= 2.2 for `http-request return`).
HAPROXY_VERSION = "2.4.*"
MINIMUM_R_VERSION = (4, 4, 0)

# Packages the runtime itself needs in every image.
RUNTIME_PACKAGES = ("Rserve", "jsonlite")
# Part of R itself: never installed from a repository.
BASE_PACKAGES = frozenset(
    {
        "base",
        "compiler",
        "datasets",
        "graphics",
        "grDevices",
        "grid",
        "methods",
        "parallel",
        "splines",
        "stats",
        "stats4",
        "tcltk",
        "tools",
        "utils",
    }
)
PACKAGE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9.]*[A-Za-z0-9]$")
R_VERSION = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")
# An R package version (Writing R Extensions 1.1.1): at least two integers joined by . or -.
PACKAGE_VERSION = re.compile(r"^\d+([.-]\d+)+$")
# The renv.lock sources renv restores from the repositories install_packages.R passes it
# (the PPM snapshot); "CRAN" is how renv before 0.15 wrote "Repository". Every other
# source (GitHub, GitLab, Bitbucket, git, URL, Local, Bioconductor, none) would fetch and
# compile code from wherever the lockfile says, with the image build's network and role.
REPOSITORY_SOURCES = frozenset({"repository", "cran"})
# Runtime files that go into the image; docs and tests stay out so they never change a tag.
RUNTIME_FILES = ("serve", "rdeploy_runtime.R", "rdeploy_server.R", "haproxy.cfg", "errors/503.http", "errors/504.http")


@dataclass(frozen=True)
class BuildContext:
    """A rendered build context: relative path -> (content, mode), and the image tag derived from it."""

    files: dict[str, tuple[bytes, int]]
    tag: str

    def tar_gz(self) -> bytes:
        """The context as a .tar.gz with fixed order, times and owners, so equal contexts give equal bytes."""
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for path in sorted(self.files):
                content, mode = self.files[path]
                info = tarfile.TarInfo(path)
                info.size = len(content)
                info.mode = mode
                info.mtime = 0
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(content))
        # mtime=0 and no file name in the gzip header: otherwise every call differs.
        return gzip.compress(raw.getvalue(), mtime=0)

    def write_to(self, directory: Path) -> None:
        """Writes the context into an (empty or new) directory, e.g. for `docker build <directory>`."""
        for path, (content, mode) in self.files.items():
            target = directory / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
            target.chmod(mode)


def normalise_packages(packages: Iterable[str]) -> list[str]:
    """Sorted, de-duplicated package names plus the runtime's own, minus R's base packages."""
    names = set(RUNTIME_PACKAGES)
    for name in packages:
        if not PACKAGE_NAME.match(name):
            raise ValueError(f"not an R package name: {name!r}")
        names.add(name)
    return sorted(names - BASE_PACKAGES, key=str.lower)


def check_r_version(r_version: str) -> None:
    match = R_VERSION.match(r_version)
    if not match:
        raise ValueError(f"R version must look like 4.4.2, got {r_version!r}")
    if tuple(int(part) for part in match.groups()) < MINIMUM_R_VERSION:
        raise ValueError(
            f"R {r_version} is older than 4.4.0, which deserializes untrusted .rds files unsafely (CVE-2024-27322)"
        )


def _shown(value: object) -> str:
    return repr(value)[:80]


def check_renv_lock(renv_lock: bytes) -> None:
    """Refuses (ValueError, naming the package and its Source) an renv.lock with any package
    that does not come from a CRAN-like repository, or with names or versions that are not
    R's: the image build restores it with network access (review finding 6)."""
    try:
        lock = json.loads(renv_lock)
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"renv.lock is not valid JSON: {error}") from error
    packages = lock.get("Packages", {}) if isinstance(lock, dict) else None
    if not isinstance(packages, dict):
        raise ValueError("renv.lock must be a JSON object whose Packages is an object of package records")
    fix = (
        "rdeploy installs packages only from CRAN-like repositories (Source: Repository), because building the "
        "image would otherwise fetch and compile code from elsewhere. Install a CRAN release of {name} "
        "(install.packages('{name}')) and run renv::snapshot() again, or leave renv.lock out of the bundle"
    )
    for key, record in packages.items():
        if not isinstance(record, dict) or not PACKAGE_NAME.match(key):
            raise ValueError(f"renv.lock lists {_shown(key)}, which is not an R package name with a package record")
        if record.get("Package") != key:
            raise ValueError(f"renv.lock's record for '{key}' names package {_shown(record.get('Package'))}")
        source = record.get("Source")
        if not isinstance(source, str) or not source:
            raise ValueError(f"renv.lock: package '{key}' has no Source. " + fix.format(name=key))
        repository = str(record.get("Repository") or "")
        if source.lower() not in REPOSITORY_SOURCES:
            raise ValueError(
                f"renv.lock: package '{key}' comes from {source[:40]} (Source: {source[:40]}). " + fix.format(name=key)
            )
        if repository.lower() in ("bioc", "bioconductor") or repository.lower().startswith("bioc"):
            raise ValueError(
                f"renv.lock: package '{key}' comes from Bioconductor (Repository: {repository[:40]}). "
                + fix.format(name=key)
            )
        version = record.get("Version")
        if version is not None and not (isinstance(version, str) and PACKAGE_VERSION.match(version)):
            raise ValueError(
                f"renv.lock: package '{key}' has version {_shown(version)}, which is not an R package version "
                "(like 1.2-3)"
            )


def render_build_context(
    *,
    r_version: str,
    packages: Iterable[str],
    renv_lock: bytes | None = None,
    ppm_snapshot: str = DEFAULT_PPM_SNAPSHOT,
) -> BuildContext:
    """Renders the build context for an image with R `r_version` and `packages` (plus renv.lock's versions).

    Raises ValueError for an R version below 4.4.0, an invalid package name, or an
    renv.lock that check_renv_lock refuses.
    """
    check_r_version(r_version)
    if renv_lock is not None:
        check_renv_lock(renv_lock)
    dockerfile = (
        (TEMPLATES_DIR / "Dockerfile.template")
        .read_text()
        .replace("@R_VERSION@", r_version)
        .replace("@HAPROXY_VERSION@", HAPROXY_VERSION)
        .replace("@PPM_URL@", ppm_snapshot)
    )
    files: dict[str, tuple[bytes, int]] = {
        "Dockerfile": (dockerfile.encode(), 0o644),
        "build/install_packages.R": ((TEMPLATES_DIR / "image" / "install_packages.R").read_bytes(), 0o644),
        "build/packages.txt": ("".join(f"{name}\n" for name in normalise_packages(packages)).encode(), 0o644),
    }
    if renv_lock is not None:
        files["build/renv.lock"] = (renv_lock, 0o644)
    for name in RUNTIME_FILES:
        source = TEMPLATES_DIR / "runtime" / name
        files[f"runtime/{name}"] = (source.read_bytes(), 0o755 if name == "serve" else 0o644)

    digest = hashlib.sha256()
    for path in sorted(files):
        content, mode = files[path]
        digest.update(f"{path}\0{mode:o}\0{len(content)}\0".encode())
        digest.update(content)
    return BuildContext(files=files, tag=f"r{r_version}-{digest.hexdigest()[:16]}")
