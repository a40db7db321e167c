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


def render_build_context(
    *,
    r_version: str,
    packages: Iterable[str],
    renv_lock: bytes | None = None,
    ppm_snapshot: str = DEFAULT_PPM_SNAPSHOT,
) -> BuildContext:
    """Renders the build context for an image with R `r_version` and `packages` (plus renv.lock's versions).

    Raises ValueError for an R version below 4.4.0 or an invalid package name.
    """
    check_r_version(r_version)
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
