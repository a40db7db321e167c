"""Checking a bundle's layout (one model.rds at its top, perhaps inside one wrapping folder)
and unpacking it into the runtime's model directory: regular files only, modes 0644/0755,
nothing outside the destination."""

from __future__ import annotations

import posixpath
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from deployer.artifacts import CHUNK_SIZE, MODEL_FILE, ArtifactRejected
from deployer.artifacts.archives import CORRUPT_ERRORS, BundleLimits, checked_members, corrupt_bundle
from deployer.artifacts.sniffing import RdsHeader, Sniffed, sniff_stream


@dataclass(frozen=True)
class BundleListing:
    files: tuple[str, ...]  # paths in the model directory (after removing a wrapping folder)
    unpacked_bytes: int
    prefix: str  # a single wrapping folder ("mymodel/") that unpacking removes, or ""
    rds: RdsHeader | None


def _wrapping_prefix(files: list[str]) -> str:
    """A single folder wrapping the whole bundle (`tar czf m.tar.gz mymodel/`), or ""."""
    if MODEL_FILE in files:
        return ""
    tops = {name.split("/", 1)[0] for name in files}
    if len(tops) == 1:
        prefix = f"{tops.pop()}/"
        if f"{prefix}{MODEL_FILE}" in files:
            return prefix
    return ""


def inspect_bundle(path: Path, kind: str, limits: BundleLimits | None = None) -> BundleListing:
    """Checks a bundle without unpacking it; ArtifactRejected says what is wrong."""
    limits = limits or BundleLimits.from_settings()
    files: list[str] = []
    sniffed: dict[str, Sniffed | ArtifactRejected] = {}
    total = 0
    try:
        for member, stream in checked_members(path, kind, limits):
            if member.is_dir or not member.name:
                continue
            files.append(member.name)
            total += member.size
            if posixpath.basename(member.name) == MODEL_FILE and stream is not None:
                try:
                    sniffed[member.name] = sniff_stream(stream)
                except ArtifactRejected as exc:
                    sniffed[member.name] = exc
    except CORRUPT_ERRORS as exc:
        raise corrupt_bundle(kind, exc) from exc
    prefix = _wrapping_prefix(files)
    if f"{prefix}{MODEL_FILE}" not in files:
        raise ArtifactRejected(
            "the bundle has no model.rds at its top level: save the model with saveRDS(model, 'model.rds') "
            "and put it next to predict.R"
        )
    model = sniffed[f"{prefix}{MODEL_FILE}"]
    if isinstance(model, ArtifactRejected):
        raise ArtifactRejected(f"model.rds in the bundle: {model}")
    if model.kind != "rds":
        raise ArtifactRejected("model.rds in the bundle is not an R serialization written by saveRDS()")
    stripped = tuple(name[len(prefix) :] for name in files if name.startswith(prefix))
    return BundleListing(files=stripped, unpacked_bytes=total, prefix=prefix, rds=model.rds)


def extract_bundle(path: Path, kind: str, destination: Path, limits: BundleLimits | None = None) -> BundleListing:
    """Unpacks a checked bundle into `destination` as the runtime's model directory:
    regular files only, modes 0644/0755, nothing outside `destination`."""
    limits = limits or BundleLimits.from_settings()
    listing = inspect_bundle(path, kind, limits)
    root = destination.resolve()
    root.mkdir(parents=True, exist_ok=True)
    try:
        for member, stream in checked_members(path, kind, limits):
            relative = member.name[len(listing.prefix) :] if member.name.startswith(listing.prefix) else ""
            if not relative:
                continue
            target = (root / relative).resolve()
            if root not in target.parents:
                raise ArtifactRejected(f"the archive member '{member.name}' points outside the bundle")
            if member.is_dir:
                target.mkdir(mode=0o755, parents=True, exist_ok=True)
                continue
            assert stream is not None
            target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            _copy_limited(stream, target, member.size)
    except CORRUPT_ERRORS as exc:
        raise corrupt_bundle(kind, exc) from exc
    return listing


def _copy_limited(stream: IO[bytes], target: Path, declared: int) -> None:
    """Copies at most the declared size: a member that inflates beyond it is corrupt."""
    written = 0
    with target.open("xb") as out:
        while chunk := stream.read(CHUNK_SIZE):
            written += len(chunk)
            if written > declared:
                raise ArtifactRejected(f"the archive member '{target.name}' is larger than its header says")
            out.write(chunk)
    target.chmod(0o644)


def copy_stream(source: IO[bytes], target: Path) -> None:
    with target.open("wb") as out:
        shutil.copyfileobj(source, out, CHUNK_SIZE)
    target.chmod(0o644)
