"""The validator demo: a real key store, a real validator on loopback, real tokens good and bad.

This is what ``jwtwatch demo`` runs until the whole detection loop lands: it shows every rejection
reason the HTTP caller never sees, and a revocation taking effect on a token already cached.
"""

from __future__ import annotations

import base64
import json
import secrets
import shutil
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from pipeline.bus import TOKEN_USAGE
from pipeline.bus.memory import MemoryBus
from pipeline.events import TokenUsage
from pipeline.keys import KeyStore
from pipeline.serving.server import background_server
from pipeline.validation.app import create_validator_app
from pipeline.validation.config import ValidatorConfig
from pipeline.validation.service import ValidatorService

ISSUER = "https://issuer.demo.jwtwatch"
AUDIENCE = "https://api.demo.jwtwatch"


def _b64(obj: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def run_validator_demo(data_dir: Path, console: Console) -> int:
    started = time.monotonic()
    if data_dir.exists():
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True)
    keys = KeyStore.init(data_dir / "keys", alg="ES256", issuer=ISSUER)
    attacker = KeyStore.init(data_dir / "attacker-keys", alg="ES256", issuer=ISSUER)
    admin_token = secrets.token_urlsafe(32)
    bus = MemoryBus()
    service = ValidatorService(
        ValidatorConfig(issuer=ISSUER, audience=AUDIENCE, jwks_file=data_dir / "keys" / "jwks.json"),
        data_dir=data_dir,
        bus=bus,
        events_out=data_dir / "events.jsonl",
        admin_token=admin_token,
    )
    events = bus.consumer([TOKEN_USAGE], "demo")
    now = time.time()
    alice = keys.issue_token("alice", AUDIENCE, ttl=600, client_id="web", scope="read")
    steps: list[tuple[str, str]] = [
        ("alice's token", alice),
        ("alice's token again (cached verification)", alice),
        ("alg: none", f"{_b64({'alg': 'none', 'typ': 'at+jwt'})}.{alice.split('.')[1]}."),
        ("signed by a stranger's key", attacker.issue_token("alice", AUDIENCE, ttl=600)),
        ("tampered payload", alice.split(".")[0] + "." + _b64({"sub": "admin"}) + "." + alice.split(".")[2]),
        ("expired", keys.issue_token("bob", AUDIENCE, ttl=60, now=now - 600)),
        ("for another API", keys.issue_token("bob", "https://other.api", ttl=600)),
    ]
    table = Table("request", "HTTP", "outcome", "reason (usage event only)", title="jwtwatch validator demo")
    failures = 0
    with background_server(create_validator_app(service)) as url, httpx.Client(base_url=url, timeout=10) as http:

        def check(label: str, token: str, expect: int) -> None:
            nonlocal failures
            response = http.get("/v1/validate", headers={"Authorization": f"Bearer {token}", "User-Agent": "demo"})
            batch = events.poll(10, timeout_s=2)
            event = TokenUsage.from_json(batch[-1].value) if batch else None
            ok = response.status_code == expect
            failures += not ok
            table.add_row(
                label,
                f"[{'green' if response.status_code == 200 else 'red'}]{response.status_code}[/]",
                event.outcome if event else "?",
                (event.reason or "") if event else "no event!",
            )

        for label, token in steps:
            check(label, token, 200 if token == alice else 401)
        revoked = http.post(
            "/v1/revocations",
            json={"kind": "sub", "value": "alice", "reason": "demo: suspected theft"},
            headers={"Authorization": f"Bearer {admin_token}"},
        )
        failures += revoked.status_code != 201
        table.add_row(f"[bold]revoke subject alice[/] → version {revoked.json().get('version')}", "201", "", "")
        check("alice's token after revocation", alice, 401)

    service.close()
    console.print(table)
    console.print(
        f"{service.emitter.emitted} usage events written to {data_dir / 'events.jsonl'}; "
        f"key store in {data_dir / 'keys'}; took {time.monotonic() - started:.1f} s"
    )
    if failures:
        console.print(f"[bold red]{failures} step(s) did not behave as expected[/]")
        return 1
    console.print("[bold green]every token got the answer it should[/]")
    return 0
