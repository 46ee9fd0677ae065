"""The ``jwtwatch`` command. Every option also reads ``JWTWATCH_<NAME>`` from the environment.

A thin layer: each command parses its options (the shared ones are declared once, in ``_options``), builds the
settings of a node (:mod:`pipeline.nodes`) or calls the function that does the work, and says what happens.
This module is the table of contents: every command is registered here, in the order ``--help`` lists them.
Nothing in the package imports the CLI.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import typer

from pipeline.cli._options import DEFAULT_MODEL_DIR
from pipeline.cli._output import failing_on
from pipeline.cli.alerts_commands import alerts_serve
from pipeline.cli.demo_commands import demo
from pipeline.cli.detection_commands import detect, train
from pipeline.cli.keys_commands import (
    keys_audit,
    keys_encrypt,
    keys_init,
    keys_init_root,
    keys_list,
    keys_rotate,
    keys_sign_jwks,
)
from pipeline.cli.pipeline_commands import pipeline_rekey, pipeline_run
from pipeline.cli.serve_commands import serve
from pipeline.cli.simulate_commands import simulate_command
from pipeline.cli.token_commands import token_issue
from pipeline.cli.validator_commands import revoke, validator_demo, validator_serve
from pipeline.errors import JwtwatchError

app = typer.Typer(
    name="jwtwatch",
    help="Catch stolen and abused JWT access tokens, and stop them within seconds.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


def _command(group: typer.Typer, name: str, function: Callable[..., None]) -> None:
    """Register ``function`` as ``name``: any error jwtwatch raises on purpose (:class:`JwtwatchError`: a corrupt
    key store, an unusable file, a refused configuration) ends the command with its one-line message and exit
    status 2, as the commands' own checks do — never with a traceback."""

    @functools.wraps(function)
    def command(*args: Any, **kwargs: Any) -> None:
        with failing_on(JwtwatchError):
            function(*args, **kwargs)

    group.command(name)(command)


def _group(name: str, summary: str) -> typer.Typer:
    group = typer.Typer(help=summary, no_args_is_help=True)
    app.add_typer(group, name=name)
    return group


# Commands first, then the groups, each in the order --help lists them.
_command(app, "serve", serve)
_command(app, "revoke", revoke)
_command(app, "train", train)
_command(app, "detect", detect)
_command(app, "simulate", simulate_command)
_command(app, "demo", demo)

validator_app = _group("validator", "The hardened token validator (forward-auth HTTP service).")
_command(validator_app, "serve", validator_serve)
_command(validator_app, "demo", validator_demo)

keys_app = _group("keys", "The bundled issuer's signing keys: init, rotate, list, audit.")
_command(keys_app, "init", keys_init)
_command(keys_app, "rotate", keys_rotate)
_command(keys_app, "init-root", keys_init_root)
_command(keys_app, "sign-jwks", keys_sign_jwks)
_command(keys_app, "encrypt", keys_encrypt)
_command(keys_app, "list", keys_list)
_command(keys_app, "audit", keys_audit)

token_app = _group("token", "Issue tokens from a key store (for demos and tests).")
_command(token_app, "issue", token_issue)

pipeline_app = _group("pipeline", "The detection pipeline as its own process (over Kafka).")
_command(pipeline_app, "run", pipeline_run)
_command(pipeline_app, "rekey", pipeline_rekey)

alerts_app = _group("alerts", "The alerts service as its own process (over Kafka).")
_command(alerts_app, "serve", alerts_serve)


def main() -> None:  # pragma: no cover - console entry point
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    app()


__all__ = ["DEFAULT_MODEL_DIR", "app", "main"]
