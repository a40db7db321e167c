"""Model versions: upload (checked, hashed, stored), inspection in an R sandbox, deletion,
and materializing the runtime's model directory for targets."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from deployer import artifacts
from deployer.models import ModelVersion

RDEPLOY_JSON = "rdeploy.json"


def model_version_materialize(*, model_version: ModelVersion, destination: Path) -> Path:
    """Writes the runtime's model directory for `model_version` into `destination`:
    model.rds (copied, or the bundle unpacked) plus rdeploy.json from the inspection.
    Safe to call again on the same destination: it is rebuilt from scratch."""
    if destination.exists():
        shutil.rmtree(destination)
    destination.mkdir(parents=True)
    with model_version.artifact.open("rb") as source:
        if model_version.artifact_kind == ModelVersion.ArtifactKind.RDS:
            artifacts.copy_stream(source, destination / artifacts.MODEL_FILE)
        else:
            # Zip needs random access: bring a remote (S3) artifact to local disk first.
            with tempfile.NamedTemporaryFile(dir=destination.parent, prefix=".bundle-") as local:
                shutil.copyfileobj(source, local, artifacts.CHUNK_SIZE)
                local.flush()
                artifacts.extract_bundle(Path(local.name), model_version.artifact_kind, destination)
    config = model_version.inspection.get("rdeploy_json")
    if config:
        (destination / RDEPLOY_JSON).write_text(json.dumps(config, indent=2) + "\n")
    return destination
