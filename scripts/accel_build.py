"""Compiling the hot path's compiled twins with Cython — for the build backend and for ``scripts/build-accel``.

Which modules have a twin, and how the running code decides whether to use them, is ``pipeline/_accel.py``.
Here: :func:`compile_twins` builds every twin, and the stamp recording the digest of the sources they were
compiled from, into a directory laid out like the package; the build hook (``scripts/hatch_build.py``) puts
those files into the wheel, and :func:`install_in_place` puts them beside their sources (editable installs,
``scripts/build-accel``). Needs Cython and setuptools (for its ``build_ext``, which drives the C compiler).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from pipeline import _accel  # noqa: E402  (stdlib only: importable in the build backend's environment)

EXTENSION_SUFFIX: str = sysconfig.get_config_var("EXT_SUFFIX")
#: Extension files of any Python (old builds for another interpreter, or in-place builds of the time before
#: twins, when ``pipeline/detection/engine.cpython-311-*.so`` sat beside — and shadowed — ``engine.py``).
EXTENSION_PATTERNS = ("*.so", "*.pyd")
#: annotation_typing off: type hints stay hints, so compiled code keeps exactly the objects the source would (a
#: float annotation would re-box every float it stores: more memory, other types).
COMPILER_DIRECTIVES = {"language_level": 3, "annotation_typing": False}


class BuildError(Exception):
    """The twins could not be compiled (no Cython, no C compiler, a compile error); jwtwatch then runs as pure
    Python."""


def module_file(module: str) -> Path:
    """Where ``module``'s extension goes, relative to the root: ``pipeline/detection/_engine_c.<suffix>``."""
    return Path(*module.split(".")).with_name(module.rsplit(".", 1)[-1] + EXTENSION_SUFFIX)


def built_files() -> list[Path]:
    """Every file a build makes, relative to the root; the stamp last (it is installed last)."""
    return [module_file(twin.compiled) for twin in _accel.TWINS] + [module_file(_accel.STAMP_MODULE)]


@contextlib.contextmanager
def _working_directory(path: Path) -> Iterator[None]:
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def compile_twins(out_dir: Path, jobs: int = os.cpu_count() or 1) -> list[Path]:
    """Compile every twin, then the stamp, into ``out_dir`` (as ``out_dir/pipeline/...``); returns
    :func:`built_files`. Raises :class:`BuildError` if anything could not be compiled."""
    try:
        from Cython.Build import cythonize
        from setuptools import Distribution, Extension
    except ImportError as error:
        raise BuildError(f"cannot compile ({error}); install Cython and setuptools") from None
    digest = _accel.sources_digest()
    with tempfile.TemporaryDirectory(prefix="jwtwatch-accel-") as scratch, _working_directory(ROOT):
        stamp_source = Path(scratch, "stamp", *_accel.STAMP_MODULE.split(".")).with_suffix(".py")
        stamp_source.parent.mkdir(parents=True)
        stamp_source.write_text(f'"""Written by scripts/accel_build.py."""\n\nSOURCES_SHA256 = "{digest}"\n')
        # Relative source paths: tracebacks through compiled code name pipeline/detection/_engine.py.
        extensions = [
            Extension(twin.compiled, [str((_accel.PACKAGE_DIR / twin.source).relative_to(ROOT))])
            for twin in _accel.TWINS
        ]
        extensions.append(Extension(_accel.STAMP_MODULE, [str(stamp_source)]))
        try:
            modules = cythonize(
                extensions,
                build_dir=str(Path(scratch, "c")),  # the generated C stays out of the source tree
                compiler_directives=COMPILER_DIRECTIVES,
                quiet=True,
                nthreads=jobs,
            )
            distribution = Distribution({"ext_modules": modules, "script_name": "accel_build"})
            distribution.script_args = [
                "build_ext",
                "--build-lib",
                str(out_dir),
                "--build-temp",
                str(Path(scratch, "o")),
                "--parallel",
                str(jobs),
            ]
            distribution.parse_command_line()
            distribution.run_commands()
        except (Exception, SystemExit) as error:  # Cython's and the compiler's errors, reported as one
            raise BuildError(f"compiling failed ({error})") from None
    if _accel.sources_digest() != digest:
        raise BuildError("a source changed while compiling; build again")
    files = built_files()
    missing = [str(path) for path in files if not (out_dir / path).exists()]
    if missing:
        raise BuildError(f"the build made no {', '.join(missing)}")
    return files


def foreign_extensions() -> list[Path]:
    """Every extension file in the source package that a build of these twins did not make (absolute paths)."""
    ours = {ROOT / path for path in built_files()}
    return sorted({path for pattern in EXTENSION_PATTERNS for path in _accel.PACKAGE_DIR.rglob(pattern)} - ours)


def remove_foreign() -> list[Path]:
    """Remove :func:`foreign_extensions` (and the manifest of the in-place builds before twins); returns them."""
    found = foreign_extensions()
    for path in found:
        path.unlink()
    (_accel.PACKAGE_DIR / "_accel_manifest.json").unlink(missing_ok=True)
    return found


def remove_in_place() -> None:
    """Remove every compiled file from the source package."""
    remove_foreign()
    for path in built_files():
        (ROOT / path).unlink(missing_ok=True)


def install_in_place(out_dir: Path, files: list[Path]) -> None:
    """Move a build's files beside their sources: the old stamp goes first and the new one comes last, so an
    interrupted install leaves no stamp (the source runs) rather than a stamp over mismatched twins."""
    (ROOT / module_file(_accel.STAMP_MODULE)).unlink(missing_ok=True)
    remove_foreign()
    for path in files:  # the stamp is last
        _put(out_dir / path, ROOT / path)


def _put(source: Path, target: Path) -> None:
    """Copy beside the target, then rename over it: a process that has the old file loaded keeps its (deleted)
    copy — writing into a loaded extension would crash it — and no process ever sees half a file."""
    partial = target.with_name(target.name + ".partial")
    shutil.copy2(source, partial)
    os.replace(partial, target)


def in_place_is_current() -> bool:
    """Whether the twins beside the sources were built from the current sources."""
    if not all((ROOT / path).exists() for path in built_files()):
        return False
    return _accel.built_from() == _accel.sources_digest()
