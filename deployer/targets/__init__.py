"""Deployment targets by name. Each lives in its own module and is imported on first use."""

from __future__ import annotations

from functools import cache

from django.utils.module_loading import import_string

from deployer.targets.base import Target

_TARGETS = {
    "local": "deployer.targets.local.LocalTarget",
    "sagemaker": "deployer.targets.sagemaker.target.SageMakerTarget",
}


@cache
def get_target(name: str) -> Target:
    """The target registered as ``name``; KeyError for an unknown one."""
    target_class: type[Target] = import_string(_TARGETS[name])
    return target_class()
