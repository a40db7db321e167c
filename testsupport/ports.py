"""Free TCP ports on 127.0.0.1, for the servers tests and benchmarks start.

Imports nothing of Django: testsupport/env.py uses it before the settings exist, and
benchmarks import it before they set the environment.
"""

from __future__ import annotations

import socket

# A port free_port() found can be taken by another process before the server meant for it
# binds it. Servers that bind port 0 themselves and report it need none; those that cannot
# start again on another free port, at most this many times.
PORT_ATTEMPTS = 5


def free_port() -> int:
    """A port free now; prefer letting the server bind port 0 (see PORT_ATTEMPTS)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def listening(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:``port``."""
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0
