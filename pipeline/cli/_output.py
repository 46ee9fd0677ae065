"""What the commands print, and how one ends with an error: one red line on stderr, exit status 2."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    from rich.progress import Progress

console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def config_errors(exc: Any) -> str:
    """A pydantic ValidationError as one line: ``field: problem; field: problem``."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors())


def fail(message: str, code: int = 2) -> NoReturn:
    err.print(f"[bold red]error:[/] {escape(message)}")
    raise typer.Exit(code)


@contextmanager
def failing_on(*errors: type[Exception], prefix: str = "") -> Iterator[None]:
    """Any of ``errors`` raised inside ends the command with its message after ``prefix`` (a ValidationError with
    each field's problem)."""
    try:
        yield
    except errors as exc:
        from pydantic import ValidationError

        fail(prefix + (config_errors(exc) if isinstance(exc, ValidationError) else str(exc)))


def log_to_stderr() -> None:
    """The services' log lines (a long-running command's voice besides its start-up lines)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def progress(description: str, total: int) -> tuple[Progress, Callable[[int], None]]:
    """A progress bar on stderr (only on a terminal) and the function that advances it."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=err, transient=True, disable=not err.is_terminal,
    )  # fmt: skip
    task = bar.add_task(description, total=total)
    return bar, lambda n: bar.advance(task, n)


def fail_with(exc: Exception) -> NoReturn:
    """:func:`fail` with the exception's message (for a node that reports a process that cannot start)."""
    fail(str(exc))
