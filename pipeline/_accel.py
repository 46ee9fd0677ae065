"""Compiled twins of the hot path: which modules have one, and whether the built twins may be used.

Every usage event runs through the windows, the features, the baselines, the engine and — on the bus — the
decoder. Each of these has its code in one Python source (``pipeline/detection/_engine.py``), which the build
backend also compiles with Cython into a *compiled twin* under a name of its own
(``pipeline.detection._engine_c``), with the C types of the ``.pxd`` named after the twin; the forest walk
(``pipeline/scoring/_forest_walk.pyx``) exists only compiled. The module callers import
(``pipeline/detection/engine.py``) picks one with a plain ``try``/``except ImportError``::

    try:
        _accel.require_current_build()
        from pipeline.detection._engine_c import *
    except ImportError:
        from pipeline.detection._engine import *

Nothing here touches the import system: importing ``pipeline`` installs no finder or hook.

A build (``scripts/accel_build.py``: the wheel's build hook, an editable install, ``scripts/build-accel``) also
compiles :data:`STAMP_MODULE`, which records the SHA-256 of the sources the twins were compiled from.
:func:`require_current_build` lets the twins be used only while every twin's source and every ``.pxd`` still has
that digest — so an edited source is never shadowed by a stale build (the source runs, with a warning) — and
the twins are used all together or not at all: they share C types (the compiled engine's windows are the
compiled windows' types), so one stale twin would break the others. ``JWTWATCH_PURE_PYTHON=1`` runs everything
from source (the tests run the engine both ways).
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PURE_PYTHON_ENV = "JWTWATCH_PURE_PYTHON"
#: Compiled by every build, after the twins: ``SOURCES_SHA256``, the :func:`sources_digest` they were built from.
STAMP_MODULE = "pipeline._accel_stamp"


@dataclass(frozen=True)
class Twin:
    """``public``: the module callers import; ``compiled``: the twin's module name; ``source``: the file it is
    compiled from, relative to the package directory."""

    public: str
    compiled: str
    source: str


TWINS = (
    Twin("pipeline.windows", "pipeline.windows._windows_c", "windows/_windows.py"),
    Twin("pipeline.features", "pipeline.features._features_c", "features/_features.py"),
    Twin("pipeline.features.baselines", "pipeline.features._baselines_c", "features/_baselines.py"),
    Twin("pipeline.detection.engine", "pipeline.detection._engine_c", "detection/_engine.py"),
    Twin("pipeline.detection.batch", "pipeline.detection._batch_c", "detection/_batch.py"),
    # Written for Cython: no Python source of its own; forest.py has a numpy walk instead.
    Twin("pipeline.scoring.forest", "pipeline.scoring._forest_walk", "scoring/_forest_walk.pyx"),
)


def sources_digest(package_dir: Path = PACKAGE_DIR, twins: tuple[Twin, ...] = TWINS) -> str:
    """SHA-256 over every twin's source and every ``.pxd`` in the package (names and contents): an augmenting
    ``.pxd`` changes what the same source compiles to, and other twins ``cimport`` it."""
    files = {package_dir / twin.source for twin in twins} | set(package_dir.rglob("*.pxd"))
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(path.relative_to(package_dir).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def pure_python_requested() -> bool:
    return os.environ.get(PURE_PYTHON_ENV, "").strip().lower() not in ("", "0", "false", "no")


def built_from() -> str | None:
    """The digest the installed twins were compiled from; None if none were built (or for another Python)."""
    try:
        stamp = importlib.import_module(STAMP_MODULE)
    except ImportError:
        return None
    return getattr(stamp, "SOURCES_SHA256", None)


def unusable_because(built: str | None, current: str, *, pure_requested: bool) -> str | None:
    """Why the twins may not be used, or None if they may."""
    if pure_requested:
        return f"{PURE_PYTHON_ENV} is set"
    if built is None:
        return "the compiled hot path is not built"
    if built != current:
        return "the compiled hot path was built from other sources than these"
    return None


@functools.cache
def _verdict() -> str | None:
    """Decided once per process, at the first hot-path import: every twin is used, or none."""
    pure = pure_python_requested()
    built = None if pure else built_from()
    reason = unusable_because(built, sources_digest() if built else "", pure_requested=pure)
    if built is not None and reason is not None:  # someone edited the hot path and did not rebuild
        warnings.warn(
            f"{reason}; running the slower Python source instead (rebuild: scripts/build-accel)",
            RuntimeWarning,
            stacklevel=3,  # the public module that imported the hot path
        )
    return reason


def require_current_build() -> None:
    """Raise ImportError unless the compiled twins may be used (the module docstring says when)."""
    reason = _verdict()
    if reason is not None:
        raise ImportError(reason)


def status() -> dict[str, bool]:
    """Public hot-path module -> whether it runs its compiled twin (imports them all)."""
    for twin in TWINS:
        importlib.import_module(twin.public)
    return {twin.public: twin.compiled in sys.modules for twin in TWINS}
