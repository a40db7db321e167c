"""A local endpoint's container, reached as the gateway reaches it: for tests and benchmarks
that start one with deployer.integrations.containers.runtimes.start themselves."""

from __future__ import annotations

import os
from pathlib import Path

from deployer.integrations.containers import runtimes
from deployer.targets.local.runtime import ping
from testsupport.waiting import wait_for


def locked_socket_answering(name: str, socket_dir: Path, *, timeout: float = 90) -> Path:
    """The runtime's socket once locked (runtimes.lock_socket) and answering /ping through it."""

    def answering() -> Path | None:
        try:
            socket_path = runtimes.lock_socket(socket_dir, group=os.getgid())
        except FileNotFoundError:
            return None
        return socket_path if ping(str(socket_path)) else None

    path: Path = wait_for(answering, timeout=timeout, interval=0.02, what=f"{name} to answer /ping on its socket")
    return path
