"""Serving images built by the local container engine, named by their build context's
content hash (deployer/serving_images.py), so the same inputs never build twice.

Inspection runs model code in ``serving_image_ensure(packages=..., renv_lock=...)``; local
endpoints run in the image of ``serving_images.model_version_image_context`` (the local
target builds it when missing), and with RDEPLOY_IMAGE_BUILDER=docker the SageMaker target
pushes that same local image to ECR.
"""

from __future__ import annotations

from collections.abc import Iterable

from deployer.integrations.containers import images
from deployer.serving_images import local_image, serving_image_context

# A cold build of packages Debian has takes well under a minute; compiling from
# RDEPLOY_CRAN_REPO can take several.
BUILD_TIMEOUT_SECONDS = 900


def serving_image_ensure(
    *, packages: Iterable[str], renv_lock: bytes | None = None, timeout: float = BUILD_TIMEOUT_SECONDS
) -> str:
    """The local image name for ``packages`` (plus the runtime's), building it now if the
    engine lacks it.

    Raises ValueError (as serving_image_context), images.ImageBuildFailed (with the
    build's last lines) and cli.EngineUnavailable / cli.EngineCommandFailed.
    """
    context = serving_image_context(packages=packages, renv_lock=renv_lock)
    image = local_image(context)
    if not images.image_present(image):
        images.build(context=context, tags=[image], timeout=timeout)
    return image
