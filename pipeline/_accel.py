"""Compiled hot paths: which modules Cython compiles, and never running a compiled copy of stale source.

The detection engine's per-event loop runs a million times a second's worth of Python; compiled with
Cython (``scripts/build-accel``, which ``make install`` runs) the same source runs about twice as fast.
Every module listed here is ordinary Python and stays the one source of truth: the compiled extension
sits next to it (``engine.cpython-311-x86_64-linux-gnu.so`` beside ``engine.py``) and Python's import
system would prefer it even after the ``.py`` changed. :class:`CompiledModuleFinder` prevents that: it
loads an extension only when the build manifest says it was compiled from exactly the source file's
current contents (SHA-256), and loads the source otherwise — with a warning, because it is slower.

``JWTWATCH_PURE_PYTHON=1`` loads every listed module from source (the tests run the engine both ways).
Modules that exist only as ``.pyx`` (:data:`EXTENSION_ONLY`) are then not importable, and their callers
use their pure-Python path.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

PACKAGE_DIR = Path(__file__).resolve().parent
#: Written by scripts/build-accel after a successful build: module name -> SHA-256 of its source and the .pxd files.
MANIFEST = PACKAGE_DIR / "_accel_manifest.json"
PURE_PYTHON_ENV = "JWTWATCH_PURE_PYTHON"

#: Python modules compiled as they are (the hot path from a usage event to a score).
COMPILED = (
    "pipeline.windows",
    "pipeline.features",
    "pipeline.features.baselines",
    "pipeline.detection.engine",
    "pipeline.detection.batch",
)
#: Modules written for Cython (``.pyx``): optional speed-ups whose callers have a pure-Python path.
EXTENSION_ONLY = ("pipeline.scoring._forest_walk",)
#: Every module scripts/build-accel builds.
ALL = (*COMPILED, *EXTENSION_ONLY)


def source_path(name: str, package_dir: Path = PACKAGE_DIR, extension_only: tuple[str, ...] = EXTENSION_ONLY) -> Path:
    """The source file a listed module is compiled from (``package_dir``: the top-level package's directory)."""
    relative = Path(*name.split(".")[1:])
    if name in extension_only:
        return package_dir / relative.with_suffix(".pyx")
    package = package_dir / relative / "__init__.py"
    return package if package.exists() else (package_dir / relative).with_suffix(".py")


def source_digest(path: Path, package_dir: Path = PACKAGE_DIR) -> str:
    """SHA-256 of the source and of every ``.pxd`` in the package: an augmenting ``.pxd`` (C types for a
    ``.py``) changes what is compiled from the same source, and other modules ``cimport`` it."""
    digest = hashlib.sha256(path.read_bytes())
    for declarations in sorted(package_dir.rglob("*.pxd")):
        digest.update(declarations.relative_to(package_dir).as_posix().encode() + b"\0")
        digest.update(declarations.read_bytes())
    return digest.hexdigest()


def read_manifest(path: Path = MANIFEST) -> dict[str, str]:
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def pure_python_requested() -> bool:
    return os.environ.get(PURE_PYTHON_ENV, "").strip().lower() not in ("", "0", "false", "no")


class CompiledModuleFinder:
    """A meta-path finder for the listed modules only: the extension if it is current, else the source."""

    def __init__(
        self,
        compiled: tuple[str, ...] = COMPILED,
        extension_only: tuple[str, ...] = EXTENSION_ONLY,
        package_dir: Path = PACKAGE_DIR,
        manifest: Path = MANIFEST,
    ) -> None:
        self.compiled, self.extension_only = compiled, extension_only
        self.package_dir, self.manifest_path = package_dir, manifest
        self._manifest: dict[str, str] | None = None

    def find_spec(
        self, name: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if name not in self.compiled and name not in self.extension_only:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or not isinstance(spec.loader, importlib.machinery.ExtensionFileLoader):
            return spec  # not compiled here: the ordinary source (or nothing)
        source = source_path(name, self.package_dir, self.extension_only)
        if pure_python_requested():
            return self._source_spec(name, source, spec)
        if self._manifest is None:
            self._manifest = read_manifest(self.manifest_path)
        if self._manifest.get(name) == source_digest(source, self.package_dir):
            return spec
        warnings.warn(
            f"{spec.origin} was not compiled from the current {source.name}; running the slower source instead "
            "(rebuild with scripts/build-accel)",
            RuntimeWarning,
            stacklevel=2,
        )
        return self._source_spec(name, source, spec)

    def _source_spec(
        self, name: str, source: Path, compiled: importlib.machinery.ModuleSpec
    ) -> importlib.machinery.ModuleSpec | None:
        if name in self.extension_only:
            # No source to fall back on: the import fails (returning None would let the next finder load the
            # extension anyway), and the caller takes its pure-Python path.
            raise ModuleNotFoundError(f"{name} is not used: {compiled.origin} is not current", name=name)
        return importlib.util.spec_from_file_location(
            name, source, submodule_search_locations=compiled.submodule_search_locations
        )


def install() -> None:
    if not any(isinstance(finder, CompiledModuleFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, CompiledModuleFinder())


def status() -> dict[str, bool]:
    """Module name -> whether the loaded (or, if not loaded yet, the importable) module is compiled."""
    result = {}
    for name in ALL:
        module = sys.modules.get(name)
        if module is None:
            try:
                module = importlib.import_module(name)
            except ImportError:
                result[name] = False
                continue
        result[name] = not str(getattr(module, "__file__", "")).endswith((".py", ".pyc"))
    return result
