"""The compiled hot path (``pipeline/_accel.py``): used when current, never when stale, identical either way, and
built by the build backend — wheels carry it.

``JWTWATCH_REQUIRE_ACCEL=1`` (which ``.ci/run`` sets) makes a missing build a failure rather than a skip:
CI must test the compiled twins that ``make install`` builds, as well as the pure-Python source.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from pipeline import _accel
from tests.support.paths import REPO
from tests.support.require import skip_or_fail

ROOT = REPO
PUBLIC = {twin.public for twin in _accel.TWINS}
STATUS = "import json, pipeline._accel as a; print(json.dumps(a.status()))"


def _python(code: str, env: dict[str, str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """``code`` in a fresh interpreter importing ``pipeline`` from ``cwd``."""
    env = {**os.environ, "PYTHONPATH": str(cwd), **env}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _status(env: dict[str, str], cwd: Path = ROOT, *, warnings: str = "error") -> dict[str, bool]:
    out = _python(f"import warnings; warnings.simplefilter({warnings!r}, RuntimeWarning); {STATUS}", env, cwd)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.splitlines()[-1])


def _require_build() -> None:
    if _accel.pure_python_requested():
        pytest.skip("JWTWATCH_PURE_PYTHON is set for this run")
    if not all(_status({_accel.PURE_PYTHON_ENV: ""}, warnings="default").values()):
        skip_or_fail("ACCEL", "the compiled hot path is not built from these sources here (scripts/build-accel)")


def test_the_compiled_modules_are_in_use_when_built() -> None:
    _require_build()
    status = _status({_accel.PURE_PYTHON_ENV: ""})  # current: not even a warning
    assert set(status) == PUBLIC and all(status.values())


def test_pure_python_mode_loads_every_module_from_source() -> None:
    status = _status({_accel.PURE_PYTHON_ENV: "1"})  # asked for: no warning
    assert status == dict.fromkeys(PUBLIC, False)


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


# ------------------------------------------------------------------------------ no import machinery


def test_importing_pipeline_installs_no_import_hook() -> None:
    """A FastAPI app that only uses the middleware imports ``pipeline``: it must find the import system as it was,
    and so must one that imports the whole hot path."""
    code = (
        "import sys; hooks = (list(sys.meta_path), list(sys.path_hooks))\n"
        "import pipeline, pipeline.validation.middleware\n"
        "assert (sys.meta_path, sys.path_hooks) == hooks, 'import pipeline changed the import system'\n"
        "import pipeline.detection.engine, pipeline.detection.replay, pipeline.scoring.model\n"
        "assert (sys.meta_path, sys.path_hooks) == hooks, 'the hot path changed the import system'\n"
        "print('ok')\n"
    )
    for pure in ("", "1"):
        out = _python(code, {_accel.PURE_PYTHON_ENV: pure})
        assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]


def test_every_public_hot_path_module_is_its_python_file() -> None:
    """The public modules only choose: no extension beside them may shadow them (the in-place builds before twins
    put ``engine.cpython-*.so`` beside ``engine.py``; ``scripts/build-accel`` removes such leftovers)."""
    for name in PUBLIC:
        module = sys.modules.get(name) or __import__(name, fromlist=["_"])
        assert module.__file__ is not None and module.__file__.endswith(".py"), module.__file__


# ------------------------------------------------------------------------------ staleness


def test_a_build_is_usable_only_for_the_sources_it_was_built_from() -> None:
    assert _accel.unusable_because("abc", "abc", pure_requested=False) is None
    assert "not built" in str(_accel.unusable_because(None, "abc", pure_requested=False))
    assert "other sources" in str(_accel.unusable_because("abc", "abd", pure_requested=False))
    assert _accel.PURE_PYTHON_ENV in str(_accel.unusable_because("abc", "abc", pure_requested=True))


def test_the_digest_covers_every_source_and_every_pxd(tmp_path: Path) -> None:
    """A ``.pxd`` gives a ``.py`` C types (or is cimported by another twin): adding or changing one changes what
    the same sources compile to, so the build before is stale."""
    package = tmp_path / "pkg"
    for twin in _accel.TWINS:
        (package / twin.source).parent.mkdir(parents=True, exist_ok=True)
        (package / twin.source).write_text("VALUE = 1\n")
    digests = {_accel.sources_digest(package)}
    (package / "windows" / "_windows.py").write_text("VALUE = 2\n")
    digests.add(_accel.sources_digest(package))
    (package / "detection" / "_engine_c.pxd").write_text("cdef int counter\n")
    digests.add(_accel.sources_digest(package))
    (package / "detection" / "_engine_c.pxd").write_text("cdef long counter\n")
    digests.add(_accel.sources_digest(package))
    (package / "scoring" / "elsewhere.pxd").write_text("cdef long counter\n")
    digests.add(_accel.sources_digest(package))
    (package / "unrelated.py").write_text("VALUE = 3\n")  # not a twin's source
    assert _accel.sources_digest(package) in digests and len(digests) == 5


def _package_copy(tmp_path: Path) -> Path:
    """The package with its built twins, in a directory of its own (so it can be edited)."""
    shutil.copytree(ROOT / "pipeline", tmp_path / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


SMALL_REPLAY = (
    "from pathlib import Path\n"
    "from pipeline.detection.replay import replay\n"
    "from pipeline.scoring.model import load_model\n"
    "from pipeline.simulate import SimulationParams, simulate\n"
    "events = simulate(SimulationParams(minutes=3, seed=1, browsers=20, mobile=5, services=2, offices=1)).events\n"
    f"alerts, _ = replay(events, load_model(Path({str(ROOT / 'models' / 'default')!r})))\n"
    "print('replayed', len(events))\n"
)


@pytest.mark.parametrize(
    "edited", ["windows/_windows.py", "detection/_engine.py", "features/_features_c.pxd", "scoring/_forest_walk.pyx"]
)
def test_after_any_hot_path_edit_everything_runs_from_source(tmp_path: Path, edited: str) -> None:
    """Edit one source or declaration without rebuilding: no twin is used — not only the edited one's, since the
    twins share C types — and one warning says so. (The windows' case also detects: before twins, a compiled
    engine beside a windows module run from source failed to import.)"""
    _require_build()
    root = _package_copy(tmp_path)
    with open(root / "pipeline" / edited, "a") as source:
        source.write("\n# edited after the build\n")
    code = STATUS if edited != "windows/_windows.py" else SMALL_REPLAY + STATUS
    out = _python(code, {_accel.PURE_PYTHON_ENV: ""}, root)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.splitlines()[-1]) == dict.fromkeys(PUBLIC, False)
    assert out.stderr.count("built from other sources than these; running the slower Python source") == 1


def test_without_a_stamp_no_twin_is_used(tmp_path: Path) -> None:
    """The stamp is installed last (and removed first): twins without one are an unfinished build, never used."""
    _require_build()
    root = _package_copy(tmp_path)
    for stamp in (root / "pipeline").glob("_accel_stamp.*"):
        stamp.unlink()
    assert _status({_accel.PURE_PYTHON_ENV: ""}, root) == dict.fromkeys(PUBLIC, False)  # and no warning


# ------------------------------------------------------------------------------ the build backend


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_wheel_carries_the_compiled_twins_built_from_its_sources(tmp_path: Path) -> None:
    """``pip wheel .`` (the build backend and its hook, in an isolated build environment): a platform wheel with
    every twin and the stamp, which — unpacked and imported on its own — runs compiled."""
    if not shutil.which("git"):
        pytest.skip("git is needed to copy the checkout")
    source = tmp_path / "checkout"
    # The committed files plus the working tree's changes, but none of its build products.
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    shutil.copy2(ROOT / ".gitignore", source / ".gitignore")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path / "dist"), str(source)],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "JWTWATCH_REQUIRE_ACCEL": "1"},
    )
    if build.returncode != 0:
        skip_or_fail("ACCEL", f"pip wheel failed: {build.stderr[-2000:]}")
    (wheel,) = (tmp_path / "dist").glob("jwtwatch-*.whl")
    assert "-cp311-" in wheel.name and not wheel.name.endswith("-none-any.whl"), wheel.name
    unpacked = tmp_path / "unpacked"
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        archive.extractall(unpacked)
    for module in [twin.compiled for twin in _accel.TWINS] + [_accel.STAMP_MODULE]:
        path = "/".join(module.split("."))
        assert any(n.startswith(path + ".cpython-") and n.endswith(".so") for n in names), module
    assert not any(n.endswith((".c", "_accel_manifest.json")) for n in names)
    status = _status({_accel.PURE_PYTHON_ENV: ""}, unpacked)
    assert status == dict.fromkeys(PUBLIC, True)
