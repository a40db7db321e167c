"""A model version's files as the runtime gets them: the model directory (model.rds, copied
or unpacked from the bundle, plus rdeploy.json from the inspection) and the digest naming it.

Below the services on purpose: inspection (deployer/services) and both targets write the
same directory, and targets must not call up into services.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from deployer.artifacts import CHUNK_SIZE, MODEL_FILE, bundles
from deployer.models import ModelVersion

RDEPLOY_JSON = "rdeploy.json"


def artifact_unpack(model_version: ModelVersion, destination: Path) -> None:
    """Writes the artifact alone into a fresh ``destination``: model.rds copied, or the
    bundle unpacked (no rdeploy.json: inspection writes it from what it finds)."""
    if destination.exists():
        shutil.rmtree(destination)
    destination.mkdir(parents=True)
    with model_version.artifact.open("rb") as source:
        if model_version.artifact_kind == ModelVersion.ArtifactKind.RDS:
            bundles.copy_stream(source, destination / MODEL_FILE)
        else:
            # Zip needs random access: bring a remote (S3) artifact to local disk first.
            with tempfile.NamedTemporaryFile(dir=destination.parent, prefix=".bundle-") as local:
                shutil.copyfileobj(source, local, CHUNK_SIZE)
                local.flush()
                bundles.extract_bundle(Path(local.name), model_version.artifact_kind, destination)


def model_version_materialize(*, model_version: ModelVersion, destination: Path) -> Path:
    """Writes the runtime's model directory for `model_version` into `destination`:
    model.rds (copied, or the bundle unpacked) plus rdeploy.json from the inspection.
    Safe to call again on the same destination: it is rebuilt from scratch."""
    artifact_unpack(model_version, destination)
    config = model_version.inspection.get("rdeploy_json")
    if config:
        (destination / RDEPLOY_JSON).write_text(_rdeploy_json_text(config))
    return destination


def model_version_directory_digest(model_version: ModelVersion) -> str:
    """A SHA-256 naming what `model_version_materialize` writes: the artifact's bytes and the
    inspection's rdeploy.json. Two versions with the same bytes but another schema or package
    list (another owner, a re-inspection) must not share model data."""
    digest = hashlib.sha256(model_version.sha256.encode())
    config = model_version.inspection.get("rdeploy_json")
    if config:
        digest.update(b"\0" + _rdeploy_json_text(config).encode())
    return digest.hexdigest()


def _rdeploy_json_text(config: dict[str, Any]) -> str:
    return json.dumps(config, indent=2) + "\n"
