"""The compiled hot path (scripts/build-accel): used when current, never when stale, identical either way.

``JWTWATCH_REQUIRE_ACCEL=1`` (which ``.ci/run`` sets) makes a missing build a failure rather than a skip:
CI must test the compiled modules that ``make install`` builds, as well as the pure-Python source.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from pipeline import _accel
from tests.support.paths import REPO
from tests.support.require import skip_or_fail


def _status_in_subprocess(env: dict[str, str]) -> dict[str, bool]:
    code = "import json, pipeline._accel as a; print(json.dumps(a.status()))"
    # A stale extension is reported as not compiled (the finder loads its source, with a warning).
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


def test_the_compiled_modules_are_in_use_when_built() -> None:
    if _accel.pure_python_requested():
        pytest.skip("JWTWATCH_PURE_PYTHON is set for this run")
    status = _status_in_subprocess({_accel.PURE_PYTHON_ENV: ""})
    if not all(status.values()):
        skip_or_fail("ACCEL", f"not every hot-path module is compiled (scripts/build-accel): {status}")
    assert set(status) == set(_accel.ALL)


def test_pure_python_mode_loads_every_module_from_source() -> None:
    status = _status_in_subprocess({_accel.PURE_PYTHON_ENV: "1"})
    assert status == dict.fromkeys(status, False)
    assert set(status) == set(_accel.ALL)


@pytest.mark.slow
def test_the_engine_gives_identical_results_as_pure_python() -> None:
    """The golden engine output, the engine's behaviour, the bus decoder's verdicts on hostile records, windows and
    features: the same tests, run again in a process where every hot-path module is loaded from its Python source
    (compiled, ``.pxd`` files give these modules C types; the source must behave the same without them)."""
    tests = [
        "tests/detection/test_engine_golden.py",
        "tests/detection/test_engine.py",
        "tests/detection/test_runner_decode.py",
        "tests/windows/test_windows.py",
        "tests/features/test_features.py",
    ]
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
        cwd=REPO,
        env={**os.environ, _accel.PURE_PYTHON_ENV: "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert " passed" in run.stdout and "skipped" not in run.stdout.splitlines()[-1]


# ------------------------------------------------------------------------------ the finder, on a toy package


@pytest.fixture
def toy_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``toypkg.hot`` compiled with Cython next to its source, and a finder for it with its own manifest."""
    try:
        from Cython.Build import cythonize
        from setuptools import Distribution, Extension
    except ImportError:
        skip_or_fail("ACCEL", "Cython or setuptools is not installed")
    package = tmp_path / "toypkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    source = package / "hot.py"
    source.write_text("VALUE = 'compiled from version 1'\n")
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        modules = cythonize([Extension("toypkg.hot", ["toypkg/hot.py"])], quiet=True, build_dir=str(tmp_path / "c"))
        distribution = Distribution({"ext_modules": modules, "script_name": "test"})
        distribution.script_args = ["build_ext", "--inplace", "--build-temp", str(tmp_path / "o")]
        distribution.parse_command_line()
        try:
            distribution.run_commands()
        except (Exception, SystemExit) as error:  # no C compiler here
            skip_or_fail("ACCEL", f"cannot compile a Cython module here: {error}")
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"toypkg.hot": hashlib.sha256(source.read_bytes()).hexdigest()}))
    finder = _accel.CompiledModuleFinder(
        compiled=("toypkg.hot",), extension_only=(), package_dir=package, manifest=manifest
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "meta_path", [finder, *sys.meta_path])
    monkeypatch.delenv(_accel.PURE_PYTHON_ENV, raising=False)
    yield source
    for name in ("toypkg.hot", "toypkg"):
        sys.modules.pop(name, None)


def _import_fresh():
    sys.modules.pop("toypkg.hot", None)
    importlib.invalidate_caches()
    return importlib.import_module("toypkg.hot")


def test_a_current_extension_is_loaded(toy_package: Path) -> None:
    module = _import_fresh()
    assert not module.__file__.endswith(".py")
    assert module.VALUE == "compiled from version 1"


def test_an_extension_older_than_its_source_is_never_loaded(toy_package: Path) -> None:
    toy_package.write_text("VALUE = 'source version 2'\n")
    with pytest.warns(RuntimeWarning, match="not compiled from the current hot.py"):
        module = _import_fresh()
    assert module.__file__.endswith("hot.py")
    assert module.VALUE == "source version 2"


def test_an_extension_built_before_a_pxd_changed_is_never_loaded(toy_package: Path) -> None:
    """A ``.pxd`` gives a ``.py`` C types (or is cimported by another module): changing one changes what the same
    source compiles to, so the extension built before is stale."""
    (toy_package.parent / "hot.pxd").write_text("cdef int counter\n")
    with pytest.warns(RuntimeWarning, match="not compiled from the current hot.py"):
        module = _import_fresh()
    assert module.__file__.endswith("hot.py")


def test_an_extension_without_a_manifest_entry_is_not_loaded(toy_package: Path) -> None:
    (toy_package.parent.parent / "manifest.json").write_text("{}")
    with pytest.warns(RuntimeWarning):
        module = _import_fresh()
    assert module.__file__.endswith("hot.py")


def test_pure_python_mode_loads_the_source_even_when_current(
    toy_package: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(_accel.PURE_PYTHON_ENV, "1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # asked for: no warning
        module = _import_fresh()
    assert module.__file__.endswith("hot.py")
