"""One exceptions module: every error class under pipeline/ lives in pipeline/errors.py, under one base, and the
tree in its docstring names every one of them."""

from __future__ import annotations

import ast

import pytest

import pipeline.errors as errors
from tests.support.paths import REPO

#: HTTP answers raised through FastAPI, not errors of jwtwatch's own (pipeline/errors.py says so).
HTTP_ANSWERS = {"AdminDenied"}


def _exception_classes_outside_errors() -> list[str]:
    found = []
    for path in sorted((REPO / "pipeline").rglob("*.py")):
        if path.name == "errors.py" and path.parent.name == "pipeline":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and node.name not in HTTP_ANSWERS:
                bases = {ast.unparse(base) for base in node.bases}
                if any(base.endswith(("Error", "Exception")) for base in bases):
                    found.append(f"{path.relative_to(REPO)}: {node.name}")
    return found


def test_no_error_class_is_defined_outside_the_errors_module() -> None:
    assert _exception_classes_outside_errors() == []


@pytest.mark.parametrize("name", errors.__all__)
def test_every_error_is_a_jwtwatch_error_and_in_the_tree(name: str) -> None:
    cls = getattr(errors, name)
    assert issubclass(cls, errors.JwtwatchError)
    assert name in (errors.__doc__ or "")


def test_every_class_of_the_module_is_exported() -> None:
    defined = {name for name, value in vars(errors).items() if isinstance(value, type)}
    assert defined == set(errors.__all__)


def test_leaves_keep_their_builtin_classes() -> None:
    """Code that caught the built-in before the move still catches the error."""
    assert issubclass(errors.RecordError, ValueError)
    assert issubclass(errors.InsecureFileError, PermissionError)
    assert issubclass(errors.KafkaCommitRejected, errors.CommitRejected)
    assert issubclass(errors.RollbackError, errors.JwksError)
