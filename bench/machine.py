"""What a benchmark ran on: CPU, Python, the libraries that matter for its figures, the date."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import time
from importlib.metadata import version
from typing import Any


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment(*distributions: str) -> dict[str, Any]:
    """The machine, plus the installed version of each named distribution (keyed by its name)."""
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        **{name: version(name) for name in distributions},
    }


def machine_line(env: dict[str, Any], *distributions: str) -> str:
    versions = " · ".join(f"{name} {env[name]}" for name in distributions)
    return f"{env['cpus']} CPU(s) {env['cpu_model']} · Python {env['python']} · {versions} · {env['date']}"


def run_line() -> str:
    """Python, the time and the load average now: the footer a benchmark prints under its table."""
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{platform.python_version()} · {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} · load average {load}"


def write_report(report: dict[str, Any], out: str | None, to_stdout: bool) -> None:
    """A benchmark's JSON report: to the ``--out`` file and/or stdout (``--json``)."""
    text = json.dumps(report, indent=2, ensure_ascii=False)
    if out:
        with open(out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    if to_stdout:
        print(text)
