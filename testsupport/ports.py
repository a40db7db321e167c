"""Free TCP ports on 127.0.0.1, for the servers tests and benchmarks start.

Imports nothing of Django: testsupport/env.py uses it before the settings exist, and
benchmarks import it before they set the environment.
"""

from __future__ import annotations

import socket


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def listening(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:``port``."""
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0
