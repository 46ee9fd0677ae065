"""The ``jwtwatch`` command. Every option also reads ``JWTWATCH_<NAME>`` from the environment.

A thin layer: each command parses its options (the shared ones are declared once, in ``_options``), builds the
settings of a node (:mod:`pipeline.nodes`) or calls the function that does the work, and says what happens.
This module is the table of contents: every command is registered here, in the order ``--help`` lists them.
Nothing in the package imports the CLI.
"""

from __future__ import annotations

import os

import typer

from pipeline.cli._options import DEFAULT_MODEL_DIR
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
from pipeline.cli.pipeline_commands import pipeline_run
from pipeline.cli.serve_commands import serve
from pipeline.cli.simulate_commands import simulate_command
from pipeline.cli.token_commands import token_issue
from pipeline.cli.validator_commands import revoke, validator_demo, validator_serve

app = typer.Typer(
    name="jwtwatch",
    help="Catch stolen and abused JWT access tokens, and stop them within seconds.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


def _group(name: str, summary: str) -> typer.Typer:
    group = typer.Typer(help=summary, no_args_is_help=True)
    app.add_typer(group, name=name)
    return group


# Commands first, then the groups, each in the order --help lists them.
app.command("serve")(serve)
app.command("revoke")(revoke)
app.command("train")(train)
app.command("detect")(detect)
app.command("simulate")(simulate_command)
app.command("demo")(demo)

validator_app = _group("validator", "The hardened token validator (forward-auth HTTP service).")
validator_app.command("serve")(validator_serve)
validator_app.command("demo")(validator_demo)

keys_app = _group("keys", "The bundled issuer's signing keys: init, rotate, list, audit.")
keys_app.command("init")(keys_init)
keys_app.command("rotate")(keys_rotate)
keys_app.command("init-root")(keys_init_root)
keys_app.command("sign-jwks")(keys_sign_jwks)
keys_app.command("encrypt")(keys_encrypt)
keys_app.command("list")(keys_list)
keys_app.command("audit")(keys_audit)

token_app = _group("token", "Issue tokens from a key store (for demos and tests).")
token_app.command("issue")(token_issue)

pipeline_app = _group("pipeline", "The detection pipeline as its own process (over Kafka).")
pipeline_app.command("run")(pipeline_run)

alerts_app = _group("alerts", "The alerts service as its own process (over Kafka).")
alerts_app.command("serve")(alerts_serve)


def main() -> None:  # pragma: no cover - console entry point
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    app()


__all__ = ["DEFAULT_MODEL_DIR", "app", "main"]
