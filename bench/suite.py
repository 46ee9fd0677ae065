"""The benchmarks ``python -m bench`` runs, their full and ``--quick`` parameters, and the headline figures of
``bench/results.json`` (the keys issue 7 names), derived from each benchmark's own report."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Report = dict[str, Any]


@dataclass(frozen=True)
class Bench:
    name: str  # as in --only and under details.<name> / runs.<name>
    module: str  # run as ``python -m <module> <args> --out FILE``
    full: dict[str, Any]  # option -> value (a list for options taking several values)
    quick: dict[str, Any]
    summary: Callable[[Report], str]  # one line for the progress display
    needs: tuple[str, ...] = field(default=())  # "wrk", "kafka"

    def parameters(self, quick: bool) -> dict[str, Any]:
        return dict(self.quick if quick else self.full)

    def argv(self, quick: bool, extra: dict[str, Any] | None = None) -> list[str]:
        argv: list[str] = []
        for option, value in {**self.parameters(quick), **(extra or {})}.items():
            argv.append(f"--{option}")
            argv += [str(v) for v in value] if isinstance(value, list | tuple) else [str(value)]
        return argv


# ----------------------------------------------------------------------------------------- report lookups


class MissingFigure(LookupError):
    """A figure a report or ``results.json`` should hold is not there; the message names its path."""


def dig(data: Any, *path: str | int, where: str = "results.json") -> Any:
    node = data
    for i, key in enumerate(path):
        try:
            node = node[key]
        except (KeyError, IndexError, TypeError):
            dotted = ".".join(str(p) for p in path[: i + 1])
            raise MissingFigure(f"{where} has no {dotted}") from None
    return node


def reuse_scenario(validator: Report) -> Report:
    """The validator report's RS256 reuse scenario (its name carries the number of uses, ``RS256 reuse x20``)."""
    for name, scenario in dig(validator, "results", where="details.validator").items():
        if name.startswith("RS256 reuse"):
            found: Report = scenario
            return found
    raise MissingFigure("details.validator.results has no 'RS256 reuse xN' scenario")


def first_seen_scenario(validator: Report) -> Report:
    scenario: Report = dig(validator, "results", "RS256 first-seen", where="details.validator")
    return scenario


# ------------------------------------------------------------------------------------------- summaries


def _validator(r: Report) -> str:
    first, reuse = first_seen_scenario(r), reuse_scenario(r)
    return (
        f"RS256 first-seen {first['jwtwatch_tokens_per_s']:,} tok/s ({first['ratio']:.2f}x PyJWT), "
        f"reused {reuse['jwtwatch_tokens_per_s']:,} tok/s ({reuse['ratio']:.1f}x)"
    )


def _detection(r: Report) -> str:
    f = r["figures"]
    ttd = f["median_time_to_detect_s"]
    return (
        f"recall {f['recall']:.2f}, benign tokens alerted {f['benign_token_share']:.4f}, "
        f"median time to detect {'-' if ttd is None else f'{ttd:.1f} s'}"
    )


def _detection_heldout(r: Report) -> str:
    f = r["figures"][r["headline_model"]]
    subjects = f["benign_alerted"]["subjects"]["rate"]
    return (
        f"{f['worlds']} held-out worlds: recall {f['recall']['rate']:.2f} (worst world {f['worst_world_recall']:.2f}), "
        f"benign subjects alerted {subjects:.4f}"
    )


def _time_to_revoke(r: Report) -> str:
    return f"p50 {r['p50_s']:.3f} s, p99 {r['p99_s']:.3f} s over {r['trials']} trials"


def _pipeline(r: Report) -> str:
    return (
        f"runner {r['runner']['events_per_s']:,} ev/s, detect .parquet {r['detect']['parquet']['events_per_s']:,} "
        f"ev/s, {r['memory']['bytes_per_entity']:,} B per entity"
    )


def _kafka(r: Report) -> str:
    return (
        f"pipeline {r['pipeline_events_per_s']:,.0f} ev/s ({r['pipeline_events_per_cpu_s']:,.0f} per CPU s), "
        f"with confluent-kafka {r['confluent_kafka']['pipeline_events_per_s']:,.0f} ev/s, "
        f"revocation propagation p99 {r['propagation_p99_s'] * 1000:.0f} ms"
    )


def _http(r: Report) -> str:
    return f"{r['http_validate_rps']:,.0f} req/s, p99 {r['http_validate_p99_ms']:.2f} ms with {r['workers']} worker(s)"


BENCHES: tuple[Bench, ...] = (
    Bench(
        "validator",
        "bench.validator",
        full={"tokens": 5000, "reuse-tokens": 1000, "uses": 20, "rounds": 5, "chunk": 1000, "rsa-bits": 2048},
        quick={"tokens": 300, "reuse-tokens": 100, "uses": 3, "rounds": 1, "chunk": 100, "rsa-bits": 2048},
        summary=_validator,
    ),
    Bench("detection", "bench.detection", full={"seeds": [7, 8, 9]}, quick={"seeds": [7]}, summary=_detection),
    # Held-out worlds of the simulator family (issue 15): the detection figures docs/detection.md leads with.
    Bench(
        "detection_heldout",
        "bench.detection",
        full={"size": "full"},
        quick={"size": "quick"},
        summary=_detection_heldout,
    ),
    Bench("time_to_revoke", "bench.time_to_revoke", full={"trials": 40}, quick={"trials": 3}, summary=_time_to_revoke),
    Bench(
        "pipeline",
        "bench.pipeline",
        full={"minutes": 30, "scale": 3, "train-minutes": 30, "partitions": 3},
        quick={"minutes": 2, "scale": 1, "train-minutes": 5, "partitions": 3},
        summary=_pipeline,
    ),
    Bench(
        "kafka",
        "bench.kafka",
        full={"trials": 50, "events": 200_000},
        quick={"trials": 5, "events": 20_000},
        summary=_kafka,
        needs=("kafka",),
    ),
    Bench(
        "http",
        "bench.http",
        full={
            "workers": [1, 2],  # headline: 1 worker — wrk runs on the same 2 cores (both reported)
            "connections": 64,
            "threads": 2,
            "duration": 15,
            "warmup": 3,
            "rounds": 3,
            "tokens": 1000,
            "first-seen-tokens": 60_000,
            "first-seen-duration": 8,
        },
        quick={
            "workers": [1],
            "connections": 16,
            "threads": 2,
            "duration": 2,
            "warmup": 1,
            "rounds": 1,
            "tokens": 100,
            "first-seen-tokens": 2000,
            "first-seen-duration": 1,
        },
        summary=_http,
        needs=("wrk",),
    ),
)
BY_NAME = {b.name: b for b in BENCHES}


# ---------------------------------------------------------------------------------------- the headline

#: The top-level keys of results.json that issue 7 names, in order.
HEADLINE_KEYS = (
    "validator_tokens_per_s",
    "validator_vs_pyjwt",
    "http_validate_rps",
    "http_validate_p99_ms",
    "pipeline_events_per_s",
    "time_to_revoke_p99_s",
)


@dataclass(frozen=True)
class Target:
    figure: str  # a headline key, with .sub for the nested ones
    op: str  # ">=" or "<="
    value: float
    issue: int

    def met(self, measured: float) -> bool:
        return measured >= self.value if self.op == ">=" else measured <= self.value


TARGETS = (
    Target("validator_vs_pyjwt.first_seen", ">=", 0.9, 2),
    Target("validator_vs_pyjwt.reused", ">=", 10.0, 2),
    Target("http_validate_rps", ">=", 5000, 7),
    Target("http_validate_p99_ms", "<=", 10.0, 7),
    Target("pipeline_events_per_s.embedded", ">=", 100_000, 3),
    Target("pipeline_events_per_s.kafka", ">=", 50_000, 5),
    Target("pipeline_events_per_s.kafka_confluent", ">=", 50_000, 5),
    Target("time_to_revoke_p99_s", "<=", 2.0, 4),
)


def _or_none(compute: Callable[[], Any]) -> Any:
    try:
        return compute()
    except (MissingFigure, KeyError, TypeError):
        return None


def headline(details: dict[str, Report]) -> dict[str, Any]:
    """The figures issue 7 names, from the benchmarks' reports (``None`` where a benchmark has not run)."""
    # a benchmark that has not run is an empty report: each figure of it is then missing (None)
    validator = details.get("validator", {})
    pipeline, kafka = details.get("pipeline", {}), details.get("kafka", {})
    http, ttr = details.get("http", {}), details.get("time_to_revoke", {})
    return {
        "validator_tokens_per_s": {
            "first_seen": _or_none(lambda: first_seen_scenario(validator)["jwtwatch_tokens_per_s"]),
            "reused": _or_none(lambda: reuse_scenario(validator)["jwtwatch_tokens_per_s"]),
        },
        "validator_vs_pyjwt": {
            "first_seen": _or_none(lambda: first_seen_scenario(validator)["ratio"]),
            "reused": _or_none(lambda: reuse_scenario(validator)["ratio"]),
        },
        "http_validate_rps": _or_none(lambda: http["http_validate_rps"]),
        "http_validate_p99_ms": _or_none(lambda: http["http_validate_p99_ms"]),
        "pipeline_events_per_s": {
            "embedded": _or_none(lambda: pipeline["runner"]["events_per_s"]),
            "kafka": _or_none(lambda: round(kafka["pipeline_events_per_s"])),
            # pipeline run --kafka-consumer confluent-kafka (librdkafka reads the usage topic)
            "kafka_confluent": _or_none(lambda: round(kafka["confluent_kafka"]["pipeline_events_per_s"])),
        },
        "time_to_revoke_p99_s": _or_none(lambda: round(ttr["p99_s"], 3)),
    }


def headline_value(results: dict[str, Any], figure: str) -> Any:
    return dig(results, *figure.split("."))


def targets(results: dict[str, Any]) -> dict[str, Any]:
    """Each target with the measured figure and whether it is met (``None`` while not measured)."""
    out = {}
    for t in TARGETS:
        measured = _or_none(lambda: headline_value(results, t.figure))  # noqa: B023 - called right here
        out[t.figure] = {
            "target": f"{t.op} {t.value:g}",
            "issue": t.issue,
            "measured": measured,
            "met": None if measured is None else t.met(measured),
        }
    return out
