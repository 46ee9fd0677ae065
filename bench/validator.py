"""Validator throughput: jwtwatch ``TokenValidator.validate`` side by side with bare PyJWT ``jwt.decode``.

A benchmark, not a timed test. Run from the repository root::

    .venv/bin/python -m bench.validator [--tokens N] [--reuse-tokens M] [--uses U] [--rounds R]
                                        [--chunk C] [--rsa-bits B] [--json] [--out FILE]

Method: both contenders get the *same* tokens in the *same* process. Each scenario is warmed up first,
then measured in ``R`` rounds. Within a round the contenders take turns on chunks of ``--chunk``
validations (who goes first alternates chunk by chunk and round by round), so load from elsewhere on the
machine hits both alike. Each contender's figure is its median tokens/s over the rounds (time measured with
``time.perf_counter``); the ratio is jwtwatch / bare.

Scenarios:

* ``first-seen`` — every token is validated once. jwtwatch gets a fresh ``TokenValidator`` per round
  (built outside the timed region), so its verified-token cache never hits; the cost of filling it counts.
* ``reuse xU`` — ``M`` distinct tokens, each validated ``U`` times (the whole list, ``U`` passes). jwtwatch
  verifies each token once and then serves it from its cache (time and revocation still checked on every
  use); bare PyJWT decodes every time.

The baseline is bare ``jwt.decode(token, key=<cryptography public key object>, algorithms=[alg],
audience=..., issuer=...)`` — a loaded key object, not a PEM string, so PyJWT does no key parsing per call.
jwtwatch runs as in service: the JWKS given inline, a :class:`RevocationIndex` holding unrelated revoked
jtis and subjects (consulted on every use), default cache size, the wall clock.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jwt
from rich.console import Console, JustifyMethod
from rich.table import Table

from bench.machine import environment, machine_line, write_report
from pipeline.events import Revocation, format_ts
from pipeline.revocations.store import RevocationIndex
from pipeline.validation import TokenValidator, ValidatorConfig
from tests.support.jwtkit import AUDIENCE, ISSUER, SigningKey, new_key, standard_claims

TOKEN_TTL_S = 3600  # far beyond the run time: no token expires mid-benchmark
WARMUP_TOKENS = 300
REVOKED_JTIS = 2_000  # unrelated entries, so revocation lookups hit a populated index
REVOKED_SUBJECTS = 200
TARGET_FIRST_SEEN = 0.9
TARGET_REUSE = 10.0


@dataclass(frozen=True)
class Scenario:
    name: str
    alg: str
    key: SigningKey
    tokens: list[str]  # distinct tokens
    uses: int  # how many times each token is validated
    target: float | None  # minimum jwtwatch/bare ratio, None when only reported
    key_desc: str


# ----------------------------------------------------------------------------------------- fixtures


def make_tokens(key: SigningKey, count: int, now: float) -> list[str]:
    headers = {"typ": "at+jwt", "kid": key.kid}
    tokens = []
    for i in range(count):
        claims = standard_claims(now, ttl=TOKEN_TTL_S, sub=f"user-{i % 997}")
        tokens.append(jwt.encode(claims, key.private, algorithm=key.alg, headers=headers))
    return tokens


def revocation_index(now: float) -> RevocationIndex:
    index = RevocationIndex()
    created, expires = format_ts(now), format_ts(now + TOKEN_TTL_S)
    for _ in range(REVOKED_JTIS):
        index.apply(
            Revocation(str(uuid.uuid4()), "jti", ISSUER, str(uuid.uuid4()), "bench", "manual", created, expires)
        )
    for i in range(REVOKED_SUBJECTS):
        # Subjects the benchmark tokens never carry: every token is checked and none is revoked.
        index.apply(
            Revocation(
                str(uuid.uuid4()),
                "sub",
                ISSUER,
                f"revoked-{i}",
                "bench",
                "manual",
                created,
                expires,
                revoked_before=created,
            )
        )
    return index


# -------------------------------------------------------------------------------------- contenders


def time_round(
    new_validator: Callable[[], TokenValidator],
    public_key: Any,
    alg: str,
    chunks: Sequence[Sequence[str]],
    distinct: int,
    ours_first: bool,
) -> tuple[float, float]:
    """One round over ``chunks``: seconds spent by jwtwatch and by bare PyJWT on the same validations.

    The contenders alternate chunk by chunk (and who goes first alternates too), so a burst of load from
    elsewhere on the machine lands on both rather than on whichever happened to be running.
    """
    validator = new_validator()  # fresh: an empty cache, built outside the timed region
    validate = validator.validate
    decode, algorithms, clock = jwt.decode, [alg], time.perf_counter
    ours = bare = 0.0
    gc.collect()
    for i, chunk in enumerate(chunks):
        for contender in ("ours", "bare") if (i % 2 == 0) == ours_first else ("bare", "ours"):
            if contender == "ours":
                start = clock()
                for token in chunk:
                    if not validate(token).ok:
                        raise RuntimeError(f"jwtwatch rejected a good token: {validate(token).reason}")
                ours += clock() - start
            else:
                start = clock()
                for token in chunk:
                    decode(token, key=public_key, algorithms=algorithms, audience=AUDIENCE, issuer=ISSUER)
                bare += clock() - start
    # The cache may only serve repeats: in a first-seen round every validation is a miss.
    uses = sum(len(chunk) for chunk in chunks)
    if validator.cache.hits != uses - distinct:
        raise RuntimeError(f"unexpected cache hits: {validator.cache.hits} for {uses} validations")
    return ours, bare


def split(sequence: Sequence[str], size: int) -> list[Sequence[str]]:
    return [sequence[i : i + size] for i in range(0, len(sequence), size)]


def run_scenario(
    scenario: Scenario, new_validator: Callable[[], TokenValidator], rounds: int, chunk: int
) -> dict[str, Any]:
    sequence = scenario.tokens * scenario.uses  # U passes over the distinct tokens
    chunks = split(sequence, chunk)
    public = scenario.key.public  # a loaded cryptography key object: the fair baseline

    warm = scenario.tokens[:WARMUP_TOKENS]
    time_round(new_validator, public, scenario.alg, split(warm * min(scenario.uses, 2), chunk), len(warm), True)

    ours: list[float] = []
    bare: list[float] = []
    for r in range(rounds):
        t_ours, t_bare = time_round(new_validator, public, scenario.alg, chunks, len(scenario.tokens), r % 2 == 0)
        ours.append(len(sequence) / t_ours)
        bare.append(len(sequence) / t_bare)

    ours_median, bare_median = statistics.median(ours), statistics.median(bare)
    ratio = ours_median / bare_median
    per_round = [o / b for o, b in zip(ours, bare, strict=True)]
    return {
        "scenario": scenario.name,
        "alg": scenario.alg,
        "key": scenario.key_desc,
        "distinct_tokens": len(scenario.tokens),
        "uses_per_token": scenario.uses,
        "validations_per_round": len(sequence),
        "rounds": rounds,
        "jwtwatch_tokens_per_s": round(ours_median),
        "pyjwt_tokens_per_s": round(bare_median),
        "ratio": round(ratio, 3),
        "ratio_per_round_min": round(min(per_round), 3),
        "ratio_per_round_max": round(max(per_round), 3),
        "jwtwatch_per_round": [round(x) for x in ours],
        "pyjwt_per_round": [round(x) for x in bare],
        "target_ratio": scenario.target,
        "met": None if scenario.target is None else ratio >= scenario.target,
    }


# ------------------------------------------------------------------------------------------- report


LIBRARIES = ("PyJWT", "cryptography")


def render(results: list[dict[str, Any]], env: dict[str, Any], console: Console) -> None:
    table = Table(title="jwtwatch TokenValidator.validate vs bare PyJWT jwt.decode (same tokens, median of rounds)")
    columns: list[tuple[str, JustifyMethod]] = [
        ("scenario", "left"),
        ("key", "left"),
        ("validations", "right"),
        ("jwtwatch tok/s", "right"),
        ("PyJWT tok/s", "right"),
        ("ratio", "right"),
        ("round range", "right"),
        ("target", "right"),
        ("met", "left"),
    ]
    for column, justify in columns:
        table.add_column(column, justify=justify)
    for r in results:
        target = "-" if r["target_ratio"] is None else f">= {r['target_ratio']}x"
        met = "-" if r["met"] is None else ("yes" if r["met"] else "NO")
        table.add_row(
            r["scenario"],
            r["key"],
            f"{r['validations_per_round']:,}",
            f"{r['jwtwatch_tokens_per_s']:,}",
            f"{r['pyjwt_tokens_per_s']:,}",
            f"{r['ratio']:.2f}x",
            f"{r['ratio_per_round_min']:.2f}-{r['ratio_per_round_max']:.2f}",
            target,
            met,
        )
    console.print(table)
    console.print(machine_line(env, *LIBRARIES))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.validator", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=5_000, help="first-seen tokens per scenario (default 5000)")
    parser.add_argument("--reuse-tokens", type=int, default=1_000, help="distinct tokens when reused (default 1000)")
    parser.add_argument("--uses", type=int, default=20, help="validations of each reused token (default 20)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the median is reported")
    parser.add_argument("--chunk", type=int, default=1_000, help="validations per interleaved chunk (default 1000)")
    parser.add_argument("--rsa-bits", type=int, default=2048, help="RSA key size for RS256 (default 2048)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON on stdout (table on stderr)")
    parser.add_argument("--out", metavar="FILE", help="also write the results as JSON to FILE")
    args = parser.parse_args(argv)
    if args.tokens < 1 or args.reuse_tokens < 1 or args.uses < 1 or args.rounds < 1 or args.chunk < 1:
        parser.error("--tokens, --reuse-tokens, --uses, --rounds and --chunk must be positive")
    if args.rsa_bits < 2048:
        parser.error("--rsa-bits must be at least 2048: jwtwatch refuses smaller RSA keys (weak_key)")

    stream = sys.stderr if args.json else sys.stdout
    console = Console(file=stream, width=None if stream.isatty() else 132)
    log = Console(stderr=True)
    began = time.perf_counter()
    now = time.time()

    keys = {
        "RS256": new_key("RS256", kid="rs256-bench", bits=args.rsa_bits),
        "ES256": new_key("ES256", kid="es256-bench"),
        "EdDSA": new_key("EdDSA", kid="eddsa-bench"),
    }
    key_desc = {"RS256": f"RSA {args.rsa_bits}-bit", "ES256": "EC P-256", "EdDSA": "Ed25519"}
    # One issuer publishing all three keys, as in service; revocations consulted on every use.
    config = ValidatorConfig(issuer=ISSUER, audience=AUDIENCE, jwks={"keys": [k.public_jwk() for k in keys.values()]})
    revocations = revocation_index(now)

    def new_validator() -> TokenValidator:
        return TokenValidator(config, revocations=revocations)

    log.print(f"[dim]signing tokens ({args.tokens:,} per algorithm + {args.reuse_tokens:,} for reuse)...[/dim]")
    rs256 = make_tokens(keys["RS256"], args.tokens + args.reuse_tokens, now)
    scenarios = [
        Scenario(
            "RS256 first-seen", "RS256", keys["RS256"], rs256[: args.tokens], 1, TARGET_FIRST_SEEN, key_desc["RS256"]
        ),
        Scenario(
            f"RS256 reuse x{args.uses}",
            "RS256",
            keys["RS256"],
            rs256[args.tokens :],
            args.uses,
            TARGET_REUSE,
            key_desc["RS256"],
        ),
        Scenario(
            "ES256 first-seen",
            "ES256",
            keys["ES256"],
            make_tokens(keys["ES256"], args.tokens, now),
            1,
            None,
            key_desc["ES256"],
        ),
        Scenario(
            "EdDSA first-seen",
            "EdDSA",
            keys["EdDSA"],
            make_tokens(keys["EdDSA"], args.tokens, now),
            1,
            None,
            key_desc["EdDSA"],
        ),
    ]

    results = []
    for scenario in scenarios:
        log.print(f"[dim]{scenario.name}: {args.rounds} rounds...[/dim]")
        results.append(run_scenario(scenario, new_validator, args.rounds, args.chunk))

    env = environment(*LIBRARIES)
    report = {
        "benchmark": "validator",
        "command": " ".join(["python -m bench.validator", *(sys.argv[1:] if argv is None else argv)]),
        "environment": env,
        "parameters": {
            "tokens_first_seen": args.tokens,
            "reuse_tokens": args.reuse_tokens,
            "uses": args.uses,
            "rounds": args.rounds,
            "chunk": args.chunk,
            "rsa_bits": args.rsa_bits,
            "warmup_tokens": WARMUP_TOKENS,
            "revocation_index_entries": REVOKED_JTIS + REVOKED_SUBJECTS,
        },
        "results": {r["scenario"]: r for r in results},
        "duration_s": round(time.perf_counter() - began, 1),
    }
    render(results, env, console)
    log.print(f"[dim]done in {report['duration_s']} s[/dim]")
    write_report(report, args.out, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
