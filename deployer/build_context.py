"""Deterministic build contexts for rdeploy's serving image: one recipe for every package set.

One image serves every model that needs the same package set: the context (Dockerfile,
the R runtime, the package list, an optional renv.lock, the package tarballs of a file://
CRAN-like repository) is rendered byte for byte the same from the same inputs, and its
content hash together with the base image is the image tag, so a lookup of the tag says
whether to build at all. The base image is a build argument (``BASE_IMAGE``): rdeploy's own
Debian base here (scripts/base_image.sh), a public Debian image on CodeBuild.

Plain Python on purpose (no Django): the build integration and the tests import it.
See container_templates/runtime/README.md, "The image".
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "container_templates"

# The base where rdeploy's own (scripts/base_image.sh) is not at hand, e.g. on CodeBuild:
# Debian trixie (R 4.5) from AWS's public mirror of Docker's official images; the recipe
# installs R, Rserve, jsonlite and HAProxy on it.
PUBLIC_BASE_IMAGE = "public.ecr.aws/debian/debian:trixie-slim"
# Where the recipe copies the context's build/ directory (install_packages.R reads it there).
BUILD_DIR_IN_IMAGE = "/tmp/rdeploy-build"  # noqa: S108 (a path inside the image build)
# A file:// repository is invisible inside a build: its tarballs travel in the context, here.
CONTEXT_REPOSITORY = "build/cran"
PACKAGE_FIELDS_WITH_DEPENDENCIES = ("Depends", "Imports", "LinkingTo")

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
# An R package version (Writing R Extensions 1.1.1): at least two integers joined by . or -.
PACKAGE_VERSION = re.compile(r"^\d+([.-]\d+)+$")
# The renv.lock sources an image can honour: packages come from Debian or a CRAN-like
# repository (RDEPLOY_CRAN_REPO); "CRAN" is how renv before 0.15 wrote "Repository". Every
# other source (GitHub, GitLab, Bitbucket, git, URL, Local, Bioconductor, none) would mean
# fetching and compiling code from wherever the lockfile says, which no build does.
REPOSITORY_SOURCES = frozenset({"repository", "cran"})
# Runtime files that go into the image; docs and tests stay out so they never change a tag.
RUNTIME_FILES = ("serve", "rdeploy_runtime.R", "rdeploy_server.R", "haproxy.cfg", "errors/503.http", "errors/504.http")


@dataclass(frozen=True)
class BuildContext:
    """A rendered build context: relative path -> (content, mode), and the image tag derived from it."""

    files: dict[str, tuple[bytes, int]]
    tag: str
    # The recipe's BASE_IMAGE build argument: every builder passes it (part of the tag).
    base_image: str

    def write_to(self, directory: Path) -> None:
        """Writes the context into an (empty or new) directory, for `podman build <directory>`."""
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


def _shown(value: object) -> str:
    return repr(value)[:80]


# A lockfile of a thousand packages is about 500 KiB.
MAX_RENV_LOCK_BYTES = 5 * 1024**2


def check_renv_lock(renv_lock: bytes) -> None:
    """Refuses (ValueError, naming the package and its Source) an renv.lock with any package
    that does not come from a CRAN-like repository, or with names or versions that are not
    R's: the image build restores it with network access (review finding 6)."""
    if len(renv_lock) > MAX_RENV_LOCK_BYTES:
        raise ValueError(f"renv.lock is above {MAX_RENV_LOCK_BYTES // 1024**2} MiB: it cannot be a real lockfile")
    try:
        lock = json.loads(renv_lock)
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"renv.lock is not valid JSON: {error}") from error
    except RecursionError as error:
        raise ValueError("renv.lock is not valid JSON: it is nested too deeply") from error
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


def _dcf_records(text: str) -> list[dict[str, str]]:
    """The records of a Debian control file (a repository's PACKAGES index)."""
    records: list[dict[str, str]] = []
    for block in re.split(r"\n\s*\n", text.strip()):
        record: dict[str, str] = {}
        field = ""
        for line in block.splitlines():
            if line[:1].isspace() and field:
                record[field] += " " + line.strip()
            elif ":" in line:
                field, _, value = line.partition(":")
                record[field] = value.strip()
        if record.get("Package"):
            records.append(record)
    return records


def _dependencies(record: dict[str, str]) -> set[str]:
    names = set()
    for field in PACKAGE_FIELDS_WITH_DEPENDENCIES:
        for entry in record.get(field, "").split(","):
            name = entry.split("(")[0].strip()
            if PACKAGE_NAME.match(name):
                names.add(name)
    return names


def repository_files(repository: Path, packages: Iterable[str]) -> dict[str, bytes]:
    """The part of a local CRAN-like repository that ``packages`` need (their tarballs and
    those of their dependencies, recursively, with an index of just those), as context
    paths under CONTEXT_REPOSITORY. Packages it lacks are left to Debian."""
    contrib = repository / "src" / "contrib"
    index = contrib / "PACKAGES"
    if index.is_file():
        text = index.read_text()
    elif index.with_suffix(".gz").is_file():
        text = gzip.decompress(index.with_suffix(".gz").read_bytes()).decode()
    else:
        raise ValueError(f"{repository} is not a CRAN-like repository: it has no src/contrib/PACKAGES")
    records = {record["Package"]: record for record in _dcf_records(text)}
    wanted, queue = set(), [name for name in packages if name in records]
    while queue:
        name = queue.pop()
        if name not in wanted:
            wanted.add(name)
            queue.extend(sorted(_dependencies(records[name]) & records.keys()))
    files: dict[str, bytes] = {}
    stanzas = []
    for name in sorted(wanted, key=str.lower):
        record = records[name]
        tarball = f"{name}_{record['Version']}.tar.gz"
        try:
            files[f"{CONTEXT_REPOSITORY}/src/contrib/{tarball}"] = (contrib / tarball).read_bytes()
        except OSError as error:
            raise ValueError(f"{repository}'s index lists {tarball}, which cannot be read: {error}") from error
        stanzas.append("".join(f"{field}: {value}\n" for field, value in record.items()))
    files[f"{CONTEXT_REPOSITORY}/src/contrib/PACKAGES"] = "\n".join(stanzas).encode()
    return files


def _repository_in_build(cran_repo: str, packages: list[str]) -> dict[str, bytes]:
    """Context files that give the build its CRAN-like repository: ``build/repository`` (its
    URL as the build sees it) and, for a file:// one, the copied part of it."""
    url = urlparse(cran_repo)
    if url.scheme in ("http", "https"):
        return {"build/repository": f"{cran_repo}\n".encode()}
    if url.scheme != "file":
        raise ValueError(f"RDEPLOY_CRAN_REPO must be an http(s):// or file:// URL, got {cran_repo!r}")
    copied = repository_files(Path(unquote(url.path)), packages)
    return {**copied, "build/repository": f"file://{BUILD_DIR_IN_IMAGE}/cran\n".encode()}


def render_build_context(
    *,
    packages: Iterable[str],
    base_image: str,
    renv_lock: bytes | None = None,
    cran_repo: str | None = None,
) -> BuildContext:
    """Renders the serving image's build context on ``base_image`` with R ``packages``.

    ``cran_repo`` (RDEPLOY_CRAN_REPO) serves the packages Debian lacks at build time; a
    file:// one is copied into the context. ``renv_lock``'s versions are compared with the
    installed ones in the build log. Raises ValueError for an invalid package name, an
    renv.lock that check_renv_lock refuses, or an unusable repository.
    """
    if renv_lock is not None:
        check_renv_lock(renv_lock)
    names = normalise_packages(packages)
    files: dict[str, tuple[bytes, int]] = {
        "Dockerfile": ((TEMPLATES_DIR / "Dockerfile.template").read_bytes(), 0o644),
        "build/install_packages.R": ((TEMPLATES_DIR / "image" / "install_packages.R").read_bytes(), 0o644),
        "build/packages.txt": ("".join(f"{name}\n" for name in names).encode(), 0o644),
    }
    if renv_lock is not None:
        files["build/renv.lock"] = (renv_lock, 0o644)
    if cran_repo:
        files.update((path, (content, 0o644)) for path, content in _repository_in_build(cran_repo, names).items())
    for name in RUNTIME_FILES:
        source = TEMPLATES_DIR / "runtime" / name
        files[f"runtime/{name}"] = (source.read_bytes(), 0o755 if name == "serve" else 0o644)

    digest = hashlib.sha256(f"BASE_IMAGE={base_image}\0".encode())
    for path in sorted(files):
        content, mode = files[path]
        digest.update(f"{path}\0{mode:o}\0{len(content)}\0".encode())
        digest.update(content)
    return BuildContext(files=files, tag=f"ctx-{digest.hexdigest()[:16]}", base_image=base_image)
