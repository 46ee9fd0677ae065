"""The docs stay true to the code: generated parts are current, every path, command and option they name exists,
and the snippets README.md shows are the ones that run (nginx config, FastAPI middleware, webhook receiver)."""

from __future__ import annotations

import importlib
import importlib.util
import re
import shlex
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
import typer.main
from typer.testing import CliRunner

from pipeline.alerts import AlertsService
from pipeline.alerts.delivery import new_secret
from pipeline.bus import REVOCATIONS, TOKEN_USAGE
from pipeline.bus.memory import MemoryBus
from pipeline.cli import app as cli_app
from pipeline.events import TokenUsage
from pipeline.keys import KeyStore
from pipeline.revocations.feed import FeedSigner
from pipeline.revocations.store import new_revocation
from pipeline.validation import ValidatorConfig
from pipeline.validation.app import create_validator_app
from pipeline.validation.config import DEFAULT_ALGORITHMS
from pipeline.validation.service import ValidatorService
from tests.support.alerts import make_alert, make_revocation
from tests.support.paths import REPO
from tests.support.servers import serve_app

README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
ALL_DOCS = [README, *DOCS]
#: The docs this suite's authors own; the stricter checks (every --option anywhere names a real one) apply to them.
OWN_DOCS = [README, REPO / "docs" / "architecture.md", REPO / "docs" / "security.md"]
ISSUER = "https://issuer.example"
AUDIENCE = "https://api.example"
REGENERATE = "run `.venv/bin/python scripts/gen_docs.py` and commit the result"


def _load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


gen_docs = _load(REPO / "scripts" / "gen_docs.py", "gen_docs")


def _code_blocks(text: str, language: str | None = None) -> list[str]:
    blocks = re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)
    return [body for lang, body in blocks if language is None or lang == language]


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------- generated parts


def test_configuration_reference_is_up_to_date() -> None:
    assert _read(gen_docs.CONFIG_DOC) == gen_docs.configuration_md(), f"docs/configuration.md is stale: {REGENERATE}"


def test_attack_catalogue_in_security_md_is_up_to_date() -> None:
    current = _read(gen_docs.SECURITY_DOC)
    assert current == gen_docs.security_md(current), f"the attack catalogue in docs/security.md is stale: {REGENERATE}"


def test_the_catalogue_lists_every_attack_with_its_reason() -> None:
    from tests.support.attacks import ATTACKS, CONTROLS

    text = _read(gen_docs.SECURITY_DOC)
    block = text[text.index(gen_docs.CATALOGUE_BEGIN) : text.index(gen_docs.CATALOGUE_END)]
    rows = dict(re.findall(r"^\| `([a-z_]+)` \| (.+) \|$", block, flags=re.MULTILINE))
    for name, _, reason in ATTACKS:
        assert f"`{name}`" in rows[reason].split(", "), f"{name} is not listed under {reason}"
    assert sum(len(cases.split(", ")) for cases in rows.values()) == len(ATTACKS)
    for name, _ in CONTROLS:
        assert f"`{name}`" in block


def test_every_cli_option_with_an_environment_variable_is_in_the_reference() -> None:
    text = _read(gen_docs.CONFIG_DOC)
    for path, command in gen_docs.cli_commands():
        assert f"### `jwtwatch {path}`" in text
        for param in command.params:
            if param.envvar:
                assert f"| `{param.envvar}` | `{param.opts[0]}` |" in text


def test_the_cli_sets_validator_config_fields_with_the_models_defaults() -> None:
    commands = dict(gen_docs.cli_commands())
    fields = ValidatorConfig.model_fields
    for path in ("validator serve", "serve"):
        options = {p.opts[0]: p for p in commands[path].params if p.opts}
        for field, option in gen_docs.CLI_CONFIG_FIELDS.items():
            assert field in fields
            assert option in options, f"{path} has no {option} for ValidatorConfig.{field}"
        assert options["--leeway"].default == fields["leeway_s"].default
        assert options["--algorithms"].default == ",".join(DEFAULT_ALGORITHMS)


def test_an_environment_variable_is_read_and_the_command_line_wins(tmp_path: Path) -> None:
    runner = CliRunner()
    from_env = runner.invoke(cli_app, ["keys", "init"], env={"JWTWATCH_KEYS_DIR": str(tmp_path / "env")})
    assert from_env.exit_code == 0, from_env.output
    assert (tmp_path / "env" / "jwks.json").exists()
    given = runner.invoke(
        cli_app, ["keys", "init", "--dir", str(tmp_path / "flag")], env={"JWTWATCH_KEYS_DIR": str(tmp_path / "env2")}
    )
    assert given.exit_code == 0, given.output
    assert (tmp_path / "flag" / "jwks.json").exists()
    assert not (tmp_path / "env2").exists()


# ------------------------------------------------------------------------- paths, commands, options

_PATH = re.compile(r"(?<![\w./<-])((?:pipeline|tests|scripts|bench|docs)/[\w./-]*[\w/])(?:::(\w+))?")
#: In every doc, module paths (pipeline/, tests/) must exist; in ours, every repository path.
_MODULE_PREFIXES = ("pipeline/", "tests/")
_DOTTED = re.compile(r"`(pipeline(?:\.\w+)+)`")


def _mentioned_paths() -> Iterator[tuple[Path, str, str | None]]:
    for doc in ALL_DOCS:
        for match in _PATH.finditer(_read(doc)):
            yield doc, match.group(1), match.group(2)


def test_docs_mention_paths_and_modules() -> None:
    found = {path for _, path, _ in _mentioned_paths()}
    assert "pipeline/validation/verifier.py" in found and "tests/validation/test_validation_attacks.py" in found


@pytest.mark.parametrize("doc", ALL_DOCS, ids=lambda p: p.name)
def test_every_path_and_test_named_in_the_docs_exists(doc: Path) -> None:
    missing = []
    for where, path, test in _mentioned_paths():
        if where != doc or (doc not in OWN_DOCS and not path.startswith(_MODULE_PREFIXES)):
            continue
        target = REPO / path
        if not target.exists():
            missing.append(path)
        elif test is not None and not re.search(rf"^(async )?def {test}\(", _read(target), flags=re.MULTILINE):
            missing.append(f"{path}::{test}")
    assert not missing, f"{doc.name} names what does not exist: {sorted(set(missing))}"


@pytest.mark.parametrize("doc", ALL_DOCS, ids=lambda p: p.name)
def test_every_dotted_pipeline_name_in_the_docs_resolves(doc: Path) -> None:
    for dotted in set(_DOTTED.findall(_read(doc))):
        parts = dotted.split(".")
        for cut in range(len(parts), 0, -1):
            try:
                obj: Any = importlib.import_module(".".join(parts[:cut]))
            except ImportError:
                continue
            for attr in parts[cut:]:
                assert hasattr(obj, attr), f"{doc.name}: {dotted} does not resolve"
                obj = getattr(obj, attr)
            break
        else:
            pytest.fail(f"{doc.name}: {dotted} does not resolve")


_ROOT_COMMAND = typer.main.get_command(cli_app)
_STOP = {"|", "||", "&", "&&", ";", ">", ">>", "2>", "<"}


def _invocations(text: str) -> Iterator[list[str]]:
    """Each ``jwtwatch …`` invocation in the code blocks and inline code of ``text``, as tokens after ``jwtwatch``."""
    lines: list[str] = []
    for block in _code_blocks(text, "bash") + _code_blocks(text, "sh") + _code_blocks(text, ""):
        lines += block.replace("\\\n", " ").splitlines()
    lines += re.findall(r"`((?:\.venv/bin/)?jwtwatch [^`]+)`", text)
    for line in lines:
        line = line.split(" # ")[0]
        try:
            tokens = shlex.split(line, comments=False)
        except ValueError:
            continue
        for i, token in enumerate(tokens):
            if re.fullmatch(r"(\$\()?(\S*/)?jwtwatch", token):
                rest = []
                for t in tokens[i + 1 :]:
                    if t in _STOP or t.startswith(("#", ">", "2>")):
                        break
                    rest.append(t.rstrip(")"))
                yield rest


@pytest.mark.parametrize("doc", ALL_DOCS, ids=lambda p: p.name)
def test_every_jwtwatch_command_and_option_in_the_docs_exists(doc: Path) -> None:
    seen = 0
    for tokens in _invocations(_read(doc)):
        seen += 1
        command: Any = _ROOT_COMMAND
        words = list(tokens)
        while hasattr(command, "commands") and words and not words[0].startswith("-"):
            name = words.pop(0)
            assert name in command.commands, f"{doc.name}: `jwtwatch … {name}` is not a command ({tokens})"
            command = command.commands[name]
        options = {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)} | {"--help"}
        for word in words:
            if word.startswith("--"):
                assert word.split("=")[0] in options, f"{doc.name}: {word} is not an option of {tokens}"
    if doc == README:
        assert seen >= 20


def test_every_option_named_in_our_docs_exists_somewhere() -> None:
    known = {"--help", "--build"}  # --build: `docker compose up --build`
    for _, command in gen_docs.cli_commands():
        known |= {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)}
    for doc in OWN_DOCS:
        for option in set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", _read(doc))):
            assert option in known, f"{doc.name} names {option}, which no jwtwatch command has"


# ------------------------------------------------------------------------------------- the snippets


def test_readme_nginx_config_is_the_one_the_nginx_test_runs() -> None:
    from tests.support.nginx import CONF

    conf = CONF.format(tmp="/tmp", port=80, api_port=9000, validator="http://127.0.0.1:8080")
    blocks = re.findall(r"^( *location [^{]*\{.*?^ *\})", conf, flags=re.DOTALL | re.MULTILINE)
    tested = [b for b in blocks if "location = /_jwtwatch" in b or "location /api/" in b]  # not the stub API
    assert len(tested) == 2
    (shown,) = _code_blocks(_read(README), "nginx")
    normalise = lambda s: [line.strip() for line in s.strip().splitlines()]  # noqa: E731
    assert normalise(shown) == normalise("\n".join(tested))


def test_readme_shows_the_forward_auth_endpoint_as_it_is() -> None:
    text = _read(README)
    for header in ("X-Auth-Subject", "X-Auth-Token-Id", "X-Auth-Client-Id", "X-Auth-Scope"):
        assert header in text
    assert "--trusted-proxies 127.0.0.1/32" in text  # what tests/validation/test_nginx.py configures


def test_the_envoy_caveat_still_holds(tmp_path: Path) -> None:
    """README's Envoy section says forward-auth is GET /v1/validate only. If this fails, update that section."""
    issuer = KeyStore.init(tmp_path / "keys", issuer=ISSUER)
    service = ValidatorService(
        ValidatorConfig(issuer=ISSUER, audience=AUDIENCE, jwks=issuer.public_jwks()), data_dir=tmp_path / "data"
    )
    token = issuer.issue_token("alice", AUDIENCE)
    try:
        with serve_app(create_validator_app(service)) as url, httpx.Client(base_url=url) as client:
            auth = {"Authorization": f"Bearer {token}"}
            assert client.get("/v1/validate", headers=auth).status_code == 200
            assert client.post("/v1/validate", headers=auth).status_code == 405
            assert client.get("/v1/validate/api/orders", headers=auth).status_code == 404
    finally:
        service.close()


@pytest.fixture
def readme_python() -> list[str]:
    return _code_blocks(_read(README), "python")


def test_readme_fastapi_middleware_snippets_run(
    readme_python: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    basic, kafka = (b for b in readme_python if "TokenValidationMiddleware" in b or "KafkaBus(" in b)
    monkeypatch.chdir(tmp_path)
    issuer = KeyStore.init(tmp_path / "keys", issuer=ISSUER)
    token = issuer.issue_token("alice", AUDIENCE)
    namespace: dict[str, Any] = {"__name__": "readme_fastapi"}
    exec(compile(basic, "README.md (FastAPI)", "exec"), namespace)
    with serve_app(namespace["app"]) as url, httpx.Client(base_url=url) as client:
        answer = client.get("/orders", headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 200 and answer.json() == {"owner": "alice"}
        assert client.get("/orders").status_code == 401
        assert client.get("/orders", headers={"Authorization": "Bearer forged.token.here"}).status_code == 401
    namespace["service"].close()

    # The Kafka variant, on the in-process bus (same interface): usage events flow, signed revocations apply.
    bus = MemoryBus()
    monkeypatch.setattr("pipeline.bus.kafka.KafkaBus", lambda bootstrap: bus)
    feed_keys = KeyStore.init(tmp_path / "feed-keys", issuer="urn:jwtwatch")
    exec(compile(kafka, "README.md (FastAPI over Kafka)", "exec"), namespace)
    service = namespace["service"]
    try:
        assert service.check(token, _context()).ok
        jti = TokenUsage.from_json(bus.consumer([TOKEN_USAGE], "t").poll(10, 1.0)[-1].value).jti
        record = new_revocation(kind="jti", iss=ISSUER, value=jti, reason="test", source="manual")
        bus.publish(REVOCATIONS, record.bus_key, FeedSigner(feed_keys).sign(record))
        deadline = time.monotonic() + 10
        while service.feed.applied == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert service.check(token, _context()).reason == "revoked"
    finally:
        namespace["feed"].stop()
        service.feed.close()
        service.close()


def _context() -> Any:
    from pipeline.validation.service import RequestContext

    return RequestContext(ip="203.0.113.9")


def test_readme_webhook_snippet_is_the_example_file() -> None:
    example = _read(REPO / "docs" / "examples" / "verify_webhook.py")
    assert example in [block for block in _code_blocks(_read(README), "python")]


def test_webhook_receiver_accepts_signed_deliveries_once_and_refuses_forgeries(tmp_path: Path) -> None:
    example = _load(REPO / "docs" / "examples" / "verify_webhook.py", "verify_webhook_example")
    service = AlertsService(tmp_path / "data", admin_token="admin-token-0123456789abcdef")
    handled: list[dict[str, Any]] = []
    stranger: list[dict[str, Any]] = []
    secrets: dict[str, str] = {}
    try:
        with (
            serve_app(_late_secret_receiver(example, secrets, handled.append)) as url,
            serve_app(example.receiver(new_secret(), stranger.append)) as other_url,
        ):
            hook_id, secrets["current"] = service.create_subscription(
                f"{url}/jwtwatch", ["token.anomaly", "token.revoked"], "low"
            )
            # A receiver holding some other secret: every delivery to it is refused (400) and stays pending.
            other_id, _ = service.create_subscription(f"{other_url}/jwtwatch", ["token.anomaly"], "low")
            alert, revocation = make_alert("a-docs", severity="high"), make_revocation("rev-docs")
            assert service.accept_alert(alert) and service.accept_revocation(revocation)
            assert service.deliver_due() == 3
            by_type = {e["type"]: e["data"] for e in handled}  # deliveries go out concurrently: any order
            assert len(handled) == 2 and set(by_type) == {"token.anomaly", "token.revoked"}
            assert by_type["token.anomaly"] == alert.to_dict()
            assert by_type["token.revoked"]["revocation_id"] == "rev-docs"
            assert {d["status"] for d in service.list_deliveries(webhook_id=hook_id)} == {"delivered"}
            assert stranger == []
            (refused,) = service.list_deliveries(webhook_id=other_id)
            assert refused["status"] == "pending" and refused["last_status_code"] == 400

            # A redelivery carries the same webhook-id: acknowledged, not handled twice.
            first = service.list_deliveries(webhook_id=hook_id)[0]
            service.redeliver(first["id"])
            assert service.deliver_due() == 1
            assert len(handled) == 2
            assert service.list_deliveries(webhook_id=hook_id)[0]["status"] == "delivered"

            # Forged or unsigned requests are refused and never handled.
            body = b'{"type":"token.anomaly","timestamp":"2025-01-01T00:00:00.000Z","data":{}}'
            stamp = str(int(time.time()))
            forged = {"webhook-id": "msg_forged", "webhook-timestamp": stamp, "webhook-signature": "v1,AAAA"}
            assert httpx.post(f"{url}/jwtwatch", content=body, headers=forged).status_code == 400
            assert httpx.post(f"{url}/jwtwatch", content=body).status_code == 400
            assert len(handled) == 2
    finally:
        service.close()


def _late_secret_receiver(example: ModuleType, secrets: dict[str, str], handle: Any) -> Any:
    """The example's receiver app, built on first request with the secret the subscription got."""
    apps: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if "app" not in apps:
            apps["app"] = example.receiver(secrets["current"], handle)
        await apps["app"](scope, receive, send)

    return app
