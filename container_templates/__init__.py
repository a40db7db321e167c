"""Files shipped into serving images and Lambda functions; tests live in tests/."""

import hashlib
from pathlib import Path

BASE_PACKAGES_FILE = Path(__file__).parent / "base" / "packages.txt"
BASE_IMAGE_REPOSITORY = "localhost/rdeploy-base"


def base_packages() -> list[str]:
    """The Debian packages in the base image (container_templates/base/packages.txt)."""
    lines = BASE_PACKAGES_FILE.read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def base_image() -> str:
    """The base image scripts/base_image.sh builds on this machine: tagged by its package
    list, so changing the list builds a new one and an unchanged list reuses it."""
    digest = hashlib.sha256("\n".join(base_packages()).encode()).hexdigest()[:12]
    return f"{BASE_IMAGE_REPOSITORY}:{digest}"
