"""The jwtwatch command as a user runs it: a process of its own, its output kept for the failure message."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

JWTWATCH = [sys.executable, "-m", "pipeline.cli"]
#: The issuer and audience the command-line tests give `keys init`, `token issue` and `validator serve`.
ISSUER = "https://issuer.cli.test"
AUDIENCE = "https://api.cli.test"


def run(*args: str, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``jwtwatch *args`` to completion; with ``check``, a non-zero exit fails showing both streams."""
    result = subprocess.run(
        [*JWTWATCH, *args], capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})}
    )
    if check and result.returncode != 0:
        raise AssertionError(f"jwtwatch {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``jwtwatch *args`` in the background, both streams into ``log``; the caller stops it."""
    return subprocess.Popen(
        [*JWTWATCH, *args],
        env={**os.environ, **env},
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
