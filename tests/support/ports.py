"""A free TCP port on loopback, for a process the test starts and must tell where to listen."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port nothing listens on right now (the OS picked it; another process could still take it first)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
