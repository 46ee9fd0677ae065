"""Time to revoke: from the first request of a stolen-token replay to the first 401 for that token.

    python -m bench.time_to_revoke [--trials 40] [--out F.json]

Runs `jwtwatch serve`'s all-in-one node (embedded bus, default model, auto-revocation on) on loopback.
Each trial issues a fresh token, lets its owner use it from one network with a browser, then replays
it from another network with curl, polling every 20 ms until the validator answers 401. Client IPs
come from X-Forwarded-For behind a trusted proxy (127.0.0.1), as behind a real gateway.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from rich.console import Console
from rich.table import Table

from pipeline.keys import KeyStore
from pipeline.nodes import AllInOne, ServeOptions
from pipeline.response.policy import ResponsePolicy
from pipeline.serving.server import background_server
from pipeline.validation import ValidatorConfig

ISSUER, AUDIENCE = "https://issuer.bench", "https://api.bench"
MODEL = Path(__file__).resolve().parent.parent / "models" / "default"
CHROME = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    console = Console()
    with tempfile.TemporaryDirectory() as tmp:
        keys = KeyStore.init(Path(tmp) / "keys", alg="ES256", issuer=ISSUER)
        node = AllInOne(
            ServeOptions(
                config=ValidatorConfig(issuer=ISSUER, audience=AUDIENCE, jwks_file=Path(tmp) / "keys" / "jwks.json"),
                data_dir=Path(tmp) / "data",
                model_dir=MODEL,
                admin_token="bench-admin-token-0123456789",
                trusted_proxies="127.0.0.1/32",
                # One revocation per trial: the breaker's default (10 a minute) would open during the run.
                policy=ResponsePolicy(enabled=True, max_per_minute=10_000),
            )
        )
        node.start()
        seconds: list[float] = []
        try:
            with background_server(node.app) as url, httpx.Client(base_url=url, timeout=5) as http:
                for trial in range(args.trials):
                    token = keys.issue_token(f"user-{trial}", AUDIENCE, ttl=600, client_id="web")
                    victim = {"Authorization": f"Bearer {token}", "User-Agent": CHROME,
                              "X-Forwarded-For": f"198.51.{trial % 200}.7"}  # fmt: skip
                    thief = {"Authorization": f"Bearer {token}", "User-Agent": "curl/8.5.0",
                             "X-Forwarded-For": f"203.0.{trial % 200}.50"}  # fmt: skip
                    for _ in range(3):
                        assert http.get("/v1/validate", headers=victim).status_code == 200
                    started = time.perf_counter()
                    while http.get("/v1/validate", headers=thief).status_code != 401:
                        if time.perf_counter() - started > 30:
                            raise SystemExit(f"trial {trial}: not revoked within 30 s")
                        time.sleep(0.02)
                    seconds.append(time.perf_counter() - started)
        finally:
            node.stop()
    values = np.asarray(seconds)
    figures = {
        "trials": len(values),
        "p50_s": float(np.percentile(values, 50)),
        "p90_s": float(np.percentile(values, 90)),
        "p99_s": float(np.percentile(values, 99)),
        "max_s": float(values.max()),
    }
    table = Table("figure", "value", "target", title="time to revoke (embedded bus)")
    table.add_row("trials", str(figures["trials"]), "")
    for name in ("p50_s", "p90_s", "p99_s", "max_s"):
        table.add_row(name, f"{figures[name]:.3f}", "≤ 2 s" if name == "p99_s" else "")
    console.print(table)
    console.print(f"{platform.python_version()} · {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    if args.out:
        args.out.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
