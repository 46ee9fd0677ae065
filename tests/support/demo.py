"""One short `jwtwatch demo` run per test session, and the command as the demo's tests run it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.support.cli import JWTWATCH
from tests.support.paths import REPO

#: Small and fast, yet every threat is injected (three incidents each) and the loop has time to act.
SHORT = ["--minutes", "3", "--speed", "20", "--users", "25", "--seed", "7", "--no-live"]


def jwtwatch(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """``jwtwatch *args`` from the checkout, without colours and at a width that keeps its lines whole."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "NO_COLOR": "1", "COLUMNS": "200"}
    return subprocess.run([*JWTWATCH, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


def demo_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The data dir of one short demo run, made once per session (the notebooks' tests share it)."""
    data_dir = tmp_path_factory.getbasetemp() / "demo-run"
    done = data_dir / "finished.txt"
    if not done.exists():
        result = jwtwatch("demo", "--data-dir", str(data_dir), *SHORT)
        assert result.returncode == 0, f"demo exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
        done.write_text(result.stdout)
    return data_dir
