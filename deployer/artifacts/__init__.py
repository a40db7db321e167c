"""Uploaded model files: recognised by content, hashed while received, checked before
anything unpacks them, and unpacked only into the runtime's model-directory layout.

- `sniffing`: what a file is, from its first bytes (an `.rds`'s header, a tar.gz, a zip).
- `uploads`: receiving an upload (hashed, within RDEPLOY_MAX_UPLOAD_BYTES) and the handler
  that stores no file for every other form.
- `archives`: reading a tar.gz or zip member by member within bounds, refusing what is built
  to exhaust memory, disk or the stack before tarfile or zipfile reads it.
- `bundles`: checking a bundle's layout and unpacking it into a model directory.

Nothing here deserializes R data: an `.rds` is only sniffed by its header bytes. R reads
it later, in a container (deployer/integrations/containers/sandbox.py).
"""

from __future__ import annotations

from deployer.errors import DomainError

CHUNK_SIZE = 1024 * 1024
MODEL_FILE = "model.rds"


class ArtifactRejected(DomainError, ValueError):
    """An upload rdeploy refuses; the message says what is wrong (HTTP 400), ``field`` which
    input it is about (None: the file itself)."""


class ArtifactTooLarge(ArtifactRejected):
    """An upload above RDEPLOY_MAX_UPLOAD_BYTES (HTTP 413)."""

    kind = "too_large"

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"the upload is larger than the upload limit of {limit} bytes "
            "(RDEPLOY_MAX_UPLOAD_BYTES, for the model and the sample together)",
            field="file",
        )
        self.limit = limit
