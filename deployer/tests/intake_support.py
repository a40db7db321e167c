"""Shared helpers for the model-intake tests: reading the real models trained by R at test
time (the `trained_models` fixture) and hand-built archives, good and hostile."""

from __future__ import annotations

import io
import tarfile
import time
import zipfile
from typing import Any

from rest_framework.test import APIClient

MODELS_URL = "/api/v1/models/"


def tar_gz(members: dict[str, bytes], *, extra: list[tarfile.TarInfo] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for info in extra or []:
            archive.addfile(info)
    return buffer.getvalue()


def zip_bytes(members: dict[str, bytes], *, modes: dict[str, int] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            if modes and name in modes:
                info.external_attr = modes[name] << 16
            archive.writestr(info, data)
    return buffer.getvalue()


def wait_for_verdict(client: APIClient, model_id: int, *, timeout: float) -> dict[str, Any]:
    """The model version as the API shows it once its inspection (by the worker) is done."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body: dict[str, Any] = client.get(f"{MODELS_URL}{model_id}/").json()
        if body["status"] != "inspecting":
            return body
        time.sleep(0.1)
    raise AssertionError(f"model {model_id} still inspecting after {timeout} s")
