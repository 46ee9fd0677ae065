"""The tests stay laid out like pipeline/: grouped by package, helpers in tests/support/, no test importing another.

A test module that imports another one runs (and re-registers the fixtures of) a module it does not own, and
ties the two together for good: what more than one test module needs belongs in tests/support/. Each rule is
checked on the real tree and, to show it can fail, on a small tree that breaks it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.paths import REPO

TESTS = REPO / "tests"
PIPELINE = REPO / "pipeline"
#: Sub-directories of tests/ that are not named after a pipeline package.
OWN_DIRECTORIES = {"support": "shared helpers", "system": "tests of the whole loop", "data": "files tests read"}
#: Python files pytest gives a meaning to; any other non-test module is a helper.
PYTEST_FILES = {"conftest.py", "__init__.py"}


def _python_files(tests: Path) -> Iterator[Path]:
    for path in sorted(tests.rglob("*.py")):
        if "__pycache__" not in path.parts:
            yield path


def _is_test_module(path: Path) -> bool:
    return path.name.startswith("test_") and path.suffix == ".py"


def _imported_modules(path: Path, package: str) -> Iterator[tuple[int, str]]:
    """Every module the file at ``path`` (in ``package``) imports, dotted and absolute, with its line; a name
    imported from a package may be a module too, so ``from a import b`` gives ``a`` and ``a.b``."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: `from . import x` in package a.b means a.b.x
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            yield node.lineno, module
            for alias in node.names:
                yield node.lineno, f"{module}.{alias.name}"


def imports_of_test_modules(tests: Path) -> list[str]:
    """``file:line imports tests.….test_x`` for every import of a test module anywhere under ``tests``."""
    found: list[str] = []
    for path in _python_files(tests):
        relative = path.relative_to(tests.parent)
        package = ".".join(relative.parent.parts)
        seen: set[tuple[int, str]] = set()
        for line, module in _imported_modules(path, package):
            parts = module.split(".")
            if parts[0] != tests.name:
                continue
            cut = next((i for i, part in enumerate(parts) if part.startswith("test_")), None)
            if cut is not None and (line, ".".join(parts[: cut + 1])) not in seen:
                seen.add((line, ".".join(parts[: cut + 1])))
                found.append(f"{relative}:{line} imports {'.'.join(parts[: cut + 1])}")
    return found


def helpers_outside_support(tests: Path) -> list[str]:
    """Modules under ``tests`` that are neither tests nor pytest's, outside tests/support/."""
    return [
        str(path.relative_to(tests.parent))
        for path in _python_files(tests)
        if not _is_test_module(path) and path.name not in PYTEST_FILES and path.parent != tests / "support"
    ]


def support_test_modules(tests: Path) -> list[str]:
    return [str(p.relative_to(tests.parent)) for p in _python_files(tests / "support") if _is_test_module(p)]


def directories_without_init(tests: Path) -> list[str]:
    """Directories holding Python files but no __init__.py: pytest would import their tests by bare name."""
    directories = {path.parent for path in _python_files(tests)}
    return sorted(str(d.relative_to(tests.parent)) for d in directories if not (d / "__init__.py").is_file())


def directories_not_mirroring(tests: Path, pipeline: Path) -> list[str]:
    """Sub-directories of ``tests`` named after no package of ``pipeline`` (and not one of tests' own)."""
    packages = {d.name for d in pipeline.iterdir() if (d / "__init__.py").is_file()}
    return sorted(
        f"tests/{d.name}"
        for d in tests.iterdir()
        if d.is_dir() and d.name != "__pycache__" and d.name not in packages and d.name not in OWN_DIRECTORIES
    )


def top_level_tests_not_mirroring(tests: Path, pipeline: Path) -> list[str]:
    """Test modules at the top of ``tests`` named after no top-level module of ``pipeline``
    (``test_<module>.py`` or ``test_<module>_<aspect>.py``; a leading underscore of the module is dropped)."""
    modules = {p.stem.lstrip("_") for p in pipeline.glob("*.py") if p.name != "__init__.py"}
    return sorted(
        f"tests/{p.name}"
        for p in tests.glob("test_*.py")
        if not any(p.stem == f"test_{m}" or p.stem.startswith(f"test_{m}_") for m in modules)
    )


# ------------------------------------------------------------------------------------------- the tree


def test_no_test_module_is_imported() -> None:
    found = imports_of_test_modules(TESTS)
    assert not found, f"move what these import into a module of tests/support/: {found}"


def test_every_helper_module_is_in_support() -> None:
    found = helpers_outside_support(TESTS)
    assert not found, f"helpers belong in tests/support/ (test modules are named test_*.py): {found}"


def test_support_holds_no_tests() -> None:
    assert not support_test_modules(TESTS), "tests/support/ is for helpers; tests go beside the package they test"


def test_every_test_directory_is_a_package() -> None:
    assert not directories_without_init(TESTS), "add an __init__.py (tests import as tests.<package>.<module>)"


def test_test_directories_mirror_pipelines_packages() -> None:
    found = directories_not_mirroring(TESTS, PIPELINE)
    assert not found, (
        f"{found}: name a directory of tests/ after the pipeline package it tests, or put tests of several "
        f"packages in tests/system/"
    )


def test_top_level_tests_are_of_pipelines_top_level_modules() -> None:
    found = top_level_tests_not_mirroring(TESTS, PIPELINE)
    assert not found, (
        f"{found}: a test of a module of pipeline/<package>/ goes in tests/<package>/, one of several packages "
        f"in tests/system/; only tests of pipeline's top-level modules stay at the top of tests/"
    )


# ------------------------------------------------------------------------------- the rules can fail


@pytest.fixture
def broken(tmp_path: Path) -> tuple[Path, Path]:
    """A tree that breaks every rule once, beside a pipeline/ with a package and a top-level module."""
    pipeline = tmp_path / "pipeline"
    (pipeline / "bus").mkdir(parents=True)
    (pipeline / "bus" / "__init__.py").write_text("")
    (pipeline / "events.py").write_text("")
    tests = tmp_path / "tests"
    files = {
        "__init__.py": "",
        "test_events.py": "",
        "test_bus_memory.py": "",  # a package's test at the top
        "helpers.py": "",  # a helper outside support/
        "bus/__init__.py": "",
        "bus/test_memory.py": "from tests.bus.test_kafka import make_bus\n",
        "bus/test_kafka.py": "from . import test_memory\nfrom .test_memory import thing\n",
        "bus/test_ok.py": "from tests.support.kafka import drain\nimport tests.support\n",
        "support/__init__.py": "",
        "support/kafka.py": "from tests.bus import test_kafka\n",
        "support/test_support.py": "",  # a test in support/
        "misc/test_orphan.py": "",  # no __init__.py, and no pipeline package called misc
    }
    for name, text in files.items():
        (tests / name).parent.mkdir(parents=True, exist_ok=True)
        (tests / name).write_text(text)
    return tests, pipeline


def test_the_rules_catch_a_tree_that_breaks_them(broken: tuple[Path, Path]) -> None:
    tests, pipeline = broken
    assert imports_of_test_modules(tests) == [
        "tests/bus/test_kafka.py:1 imports tests.bus.test_memory",
        "tests/bus/test_kafka.py:2 imports tests.bus.test_memory",
        "tests/bus/test_memory.py:1 imports tests.bus.test_kafka",
        "tests/support/kafka.py:1 imports tests.bus.test_kafka",
    ]
    assert helpers_outside_support(tests) == ["tests/helpers.py"]
    assert support_test_modules(tests) == ["tests/support/test_support.py"]
    assert directories_without_init(tests) == ["tests/misc"]
    assert directories_not_mirroring(tests, pipeline) == ["tests/misc"]
    assert top_level_tests_not_mirroring(tests, pipeline) == ["tests/test_bus_memory.py"]
