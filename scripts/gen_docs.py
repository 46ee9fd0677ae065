"""Generate the parts of the docs that must match the code: the configuration reference and the attack catalogue.

    .venv/bin/python scripts/gen_docs.py           # rewrite docs/configuration.md and the catalogue in docs/security.md
    .venv/bin/python scripts/gen_docs.py --check   # exit 1 if either is out of date (as tests/system/test_docs.py)

Sources: the ``jwtwatch`` command itself (``pipeline/cli/``: every option, its ``JWTWATCH_*`` environment
variable, type, default and help), the :class:`~pipeline.validation.ValidatorConfig` model (field types,
defaults, constraints, descriptions), and ``tests/support/attacks.py`` (the attack catalogue).

This is a script, not part of the ``pipeline`` package: it imports ``pipeline.cli`` (which nothing inside
the package may import) and the tests' attack catalogue.
"""

from __future__ import annotations

import argparse
import sys
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CONFIG_DOC = ROOT / "docs" / "configuration.md"
SECURITY_DOC = ROOT / "docs" / "security.md"
CATALOGUE_BEGIN = "<!-- BEGIN GENERATED attack-catalogue (scripts/gen_docs.py) -->"
CATALOGUE_END = "<!-- END GENERATED attack-catalogue -->"

#: ValidatorConfig fields the CLI sets (``validator serve`` and ``serve``), and the option that sets each.
#: tests/system/test_docs.py checks that these options exist and that their defaults equal the model's.
CLI_CONFIG_FIELDS: dict[str, str] = {
    "issuer": "--issuer",
    "audience": "--audience",
    "jwks_file": "--jwks-file",
    "jwks_url": "--jwks-url",
    "algorithms": "--algorithms",
    "leeway_s": "--leeway",
    "require_typ": "--require-typ",
}

_TYPE_NAMES = {str: "text", int: "integer", float: "number", bool: "flag", Path: "path"}


# ------------------------------------------------------------------------------------------ the CLI


def cli_commands() -> Iterator[tuple[str, Any]]:
    """Every runnable ``jwtwatch`` command as (``"validator serve"``, command), in ``--help`` order."""
    import typer.main

    from pipeline.cli import app

    def walk(prefix: str, group: Any) -> Iterator[tuple[str, Any]]:
        for name, command in group.commands.items():
            path = f"{prefix} {name}".strip()
            if hasattr(command, "commands"):
                yield from walk(path, command)
            else:
                yield path, command

    yield from walk("", typer.main.get_command(app))


def _options(command: Any) -> list[Any]:
    return [p for p in command.params if p.opts and p.opts[0].startswith("--") and p.name != "help"]


def _type_name(param: Any) -> str:
    annotation = param.type_descriptor.annotation
    if typing.get_origin(annotation) is list:
        (annotation,) = typing.get_args(annotation)
    name = _TYPE_NAMES.get(annotation, getattr(annotation, "__name__", str(annotation)))
    return f"{name}, repeatable" if param.multiple else name


def _default(param: Any) -> str:
    if param.required:
        return "**required**"
    value = param.default
    if param.is_flag:
        return "off" if not value else "on"
    if value is None:
        return "—"
    if isinstance(value, Path):
        return f"`{value.relative_to(ROOT) if value.is_absolute() and value.is_relative_to(ROOT) else value}`"
    return f"`{value}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def option_rows() -> list[dict[str, str]]:
    """One row per (command, option): what the configuration reference shows."""
    rows: list[dict[str, str]] = []
    for path, command in cli_commands():
        for param in _options(command):
            rows.append(
                {
                    "command": path,
                    "option": param.opts[0],
                    "env": param.envvar or "",
                    "type": _type_name(param),
                    "default": _default(param),
                    "help": _cell(param.help or ""),
                }
            )
    # An option without help text of its own borrows the text of the same setting elsewhere (same variable).
    by_env = {row["env"]: row["help"] for row in rows if row["env"] and row["help"]}
    for row in rows:
        if not row["help"] and row["env"] in by_env:
            row["help"] = by_env[row["env"]]
    return rows


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0] if text and text.strip() else ""


# ------------------------------------------------------------------------------------- the library


def _annotation(annotation: Any) -> str:
    text = annotation.__name__ if isinstance(annotation, type) else str(annotation)
    for prefix in ("typing.", "pathlib."):
        text = text.replace(prefix, "")
    return text


def _constraints(field: Any) -> str:
    parts = []
    for item in field.metadata:
        for name, symbol in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<"), ("min_length", "length ≥")):
            value = getattr(item, name, None)
            if value is not None:
                parts.append(f"{symbol} {value}")
    return ", ".join(parts)


def config_rows() -> list[dict[str, str]]:
    from pydantic_core import PydanticUndefined

    from pipeline.validation import ValidatorConfig

    rows = []
    for name, field in ValidatorConfig.model_fields.items():
        default = "**required**" if field.default is PydanticUndefined else f"`{field.default!r}`"
        rows.append(
            {
                "field": name,
                "type": _annotation(field.annotation),
                "default": default,
                "constraints": _constraints(field),
                "cli": CLI_CONFIG_FIELDS.get(name, ""),
                "description": _cell(field.description or ""),
            }
        )
    return rows


# ---------------------------------------------------------------------------- configuration.md


def configuration_md() -> str:
    rows = option_rows()
    commands = dict(cli_commands())
    out: list[str] = [
        "# Configuration reference",
        "",
        "<!-- Generated by scripts/gen_docs.py from pipeline/cli/ and pipeline/validation/config.py."
        " Do not edit by hand: tests/system/test_docs.py fails when this file is out of date. -->",
        "",
        "jwtwatch is configured by command-line options. An option with an environment variable reads it when",
        "the option is not given on the command line (the command line wins; then the variable; then the",
        "default). Flags read from the environment accept `1`/`true`/`yes`/`on` and `0`/`false`/`no`/`off`.",
        "Secrets never go on the command line: the admin token is read from the file `--admin-token-file` names.",
        "",
        "Regenerate after changing an option or a field: `.venv/bin/python scripts/gen_docs.py`.",
        "",
        "## Environment variables",
        "",
        "| variable | option | commands |",
        "|---|---|---|",
    ]
    by_env: dict[str, dict[str, list[str]]] = {}
    for row in rows:
        if row["env"]:
            by_env.setdefault(row["env"], {}).setdefault(row["option"], []).append(row["command"])
    for env in sorted(by_env):
        for option, used_by in by_env[env].items():
            out.append(f"| `{env}` | `{option}` | {', '.join(f'`{c}`' for c in used_by)} |")
    out += ["", "Options not listed here are read from the command line only (see the tables below).", ""]
    out += ["## Commands", ""]
    for path, command in commands.items():
        out += [f"### `jwtwatch {path}`", ""]
        summary = _first_line(command.help)
        if summary:
            out += [summary, ""]
        command_rows = [r for r in rows if r["command"] == path]
        if not command_rows:
            out += ["No options.", ""]
            continue
        out += ["| option | environment variable | type | default | description |", "|---|---|---|---|---|"]
        for r in command_rows:
            env = f"`{r['env']}`" if r["env"] else "—"
            out.append(f"| `{r['option']}` | {env} | {r['type']} | {r['default']} | {r['help']} |")
        out.append("")
    out += [
        "## Library: `ValidatorConfig`",
        "",
        "`pipeline.validation.ValidatorConfig` (`pipeline/validation/config.py`) decides whether a token is",
        "accepted; it is checked when it is built (a bad value raises pydantic's `ValidationError`, which the CLI",
        "prints as one line). Use it with `TokenValidator` or `ValidatorService` (FastAPI middleware). The CLI sets",
        "the fields with an option in the *CLI* column; the others keep their defaults there. Exactly one of",
        "`jwks_file`, `jwks_url` and `jwks` must be given.",
        "",
        "| field | type | default | constraints | CLI | description |",
        "|---|---|---|---|---|---|",
    ]
    for r in config_rows():
        cli = f"`{r['cli']}`" if r["cli"] else "—"
        kind = r["type"].replace("|", "\\|")  # a bare | would end the table cell, even inside backticks
        out.append(
            f"| `{r['field']}` | `{kind}` | {r['default']} | {r['constraints'] or '—'} | {cli} | {r['description']} |"
        )
    out.append("")
    return "\n".join(out)


# ----------------------------------------------------------------------- the attack catalogue


def attack_catalogue_md() -> str:
    from tests.support import attacks as catalogue

    by_reason: dict[str, list[str]] = {}
    for name, _, reason in catalogue.ATTACKS:
        by_reason.setdefault(reason, []).append(name)
    http_names = {a[0] for a in catalogue.HTTP_ATTACKS}
    only_in_process = sorted(a[0] for a in catalogue.ATTACKS if a[0] not in http_names)
    out = [
        CATALOGUE_BEGIN,
        "",
        f"{len(catalogue.ATTACKS)} attack cases, each rejected with exactly the reason shown "
        "(`test_attack_is_rejected_in_process`), and again over HTTP (`test_attack_is_rejected_over_http`: 401 — "
        "431 for `too_large` — with nothing but `invalid_token` in the answer, and the reason in the usage event)"
        + (f"; not over HTTP: {', '.join(f'`{n}`' for n in only_in_process)}." if only_in_process else "."),
        "",
        "| reason | cases |",
        "|---|---|",
    ]
    for reason, names in by_reason.items():
        out.append(f"| `{reason}` | {', '.join(f'`{n}`' for n in names)} |")
    out += [
        "",
        f"{len(catalogue.CONTROLS)} controls must pass, in process and over HTTP (`test_control_passes_in_process`, "
        f"`test_control_passes_over_http`): {', '.join(f'`{c[0]}`' for c in catalogue.CONTROLS)}.",
        "",
        CATALOGUE_END,
    ]
    return "\n".join(out)


def security_md(current: str) -> str:
    """``current`` with its generated catalogue block replaced by a fresh one."""
    start, end = current.find(CATALOGUE_BEGIN), current.find(CATALOGUE_END)
    if start < 0 or end < start:
        raise ValueError(f"{SECURITY_DOC.relative_to(ROOT)} lacks the markers {CATALOGUE_BEGIN!r} … {CATALOGUE_END!r}")
    return current[:start] + attack_catalogue_md() + current[end + len(CATALOGUE_END) :]


def expected() -> dict[Path, str]:
    return {CONFIG_DOC: configuration_md(), SECURITY_DOC: security_md(SECURITY_DOC.read_text(encoding="utf-8"))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="only check; exit 1 if a file is out of date")
    args = parser.parse_args(argv)
    stale = []
    for path, text in expected().items():
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        stale.append(path)
        if not args.check:
            path.write_text(text, encoding="utf-8")
    for path in stale:
        verb = "out of date" if args.check else "rewritten"
        print(f"{path.relative_to(ROOT)}: {verb}")
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["attack_catalogue_md", "cli_commands", "config_rows", "configuration_md", "expected", "option_rows"]
