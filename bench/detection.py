"""Detection quality on worlds nobody tuned against: the simulator family's held-out region.

    python -m bench.detection [--size full|quick] [--worlds N] [--family-seed S] [--model-dir DIR] [--out F.json]
    python -m bench.detection --seeds 7 8 9 [--model-dir DIR] [--out F.json]     # development figures

**Held-out mode** (the default). :class:`pipeline.simulate.family.WorldFamily` splits the simulator's parameter
space into a tuning region and a held-out region; each held-out world draws every behaviour from the held-out
ranges (more devices per user, Wi-Fi/cell ping-pong, IPv6 privacy addresses, office egress pools, split-tunnel
VPNs, attackers on residential and mobile networks copying the victim's user agent...). Per world, as a new user
would: train with ``jwtwatch train``'s code path (:func:`pipeline.detection.training.train_model`) on an attack-free
stream of that world, then detect (``jwtwatch detect``'s code path, :func:`pipeline.detection.replay.replay`) on a
labelled stream of the same world; the shipped model (``--model-dir``) is scored on the same streams too. Reported
over the worlds: median and worst recall per threat, benign tokens/IPs/subjects alerted with Wilson 95 %
intervals, false-alert rate per benign look-alike kind, stolen-replay recall per attack variant, median time to
detect. ``--size quick`` runs 2 small worlds (a smoke test, about a minute).

**Development mode** (``--seeds``): the fixed evaluation worlds of the default simulator (seeds 7, 8, 9), whose
behaviours the rules were designed around — a development aid, not evidence.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from pipeline.detection.evaluate import Evaluation, across_worlds, evaluate
from pipeline.detection.replay import replay
from pipeline.detection.training import TrainingParams, train_model
from pipeline.scoring.model import load_model
from pipeline.simulate import THREATS, SimulationParams, simulate
from pipeline.simulate.family import WorldFamily, train_params

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "models" / "default"

#: Held-out sizes: (worlds, minutes, browser users, incidents per threat). Full: 12 worlds x 6 threats x 4 incidents
#: = 48 incidents per threat; each world's training stream is as long as its test stream.
SIZES = {"full": (12, 30.0, 150, 4), "quick": (2, 10.0, 60, 2)}
FAMILY_SEED = 15

# Unlike the training traffic (defaults, seed 1): more mobile users, more offices, more services.
EVALUATION: dict[str, Any] = dict(minutes=30, browsers=400, mobile=200, services=25, offices=12, incidents_per_threat=8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--seeds", type=int, nargs="+", help="development mode: the default world at these seeds")
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--worlds", type=int, help="held-out worlds (default: by --size)")
    parser.add_argument("--family-seed", type=int, default=FAMILY_SEED)
    parser.add_argument(
        "--region",
        choices=["heldout", "tuning"],
        default="heldout",
        help="tuning: the worlds features, rules and thresholds may be tuned on (a development aid, not evidence)",
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.seeds:
        development(args)
    else:
        heldout(args)


def _world_row(world_index: int, which: str, result: Evaluation, events: int, alerts: int) -> dict[str, object]:
    return {
        "world": world_index,
        "model": which,
        "events": events,
        "alerts": alerts,
        **result.summary(),
        "threats": {t.threat: [t.incidents, t.detected] for t in result.threats.values()},
    }


#: What each world is judged with: (name, trained per world?, with the world's IP database?, with the history
#: training learned?). The first is the headline: an operator with an ASN database who trained on their own
#: traffic, as `jwtwatch train` then `jwtwatch detect --ip-db` do by default.
SETUPS: tuple[tuple[str, bool, bool, bool], ...] = (
    ("trained, IP database, history", True, True, True),
    ("trained, no IP database, history", True, False, True),
    ("trained, IP database, cold start", True, True, False),
    ("shipped, no IP database, cold start", False, False, False),
)


def heldout(args: argparse.Namespace) -> None:
    from pipeline.networks import PREFIXES, open_ip_db
    from pipeline.simulate.io import write_ip_db

    console = Console(stderr=True)
    count, minutes, browsers, incidents = SIZES[args.size]
    count = args.worlds or count
    family = WorldFamily(seed=args.family_seed, minutes=minutes, browsers=browsers, incidents_per_threat=incidents)
    shipped = load_model(args.model_dir)
    started = time.perf_counter()
    results: dict[str, list[Evaluation]] = {name: [] for name, *_ in SETUPS}
    worlds: list[dict[str, object]] = []
    missed: list[str] = []
    region = args.region
    with tempfile.TemporaryDirectory(prefix="jwtwatch-bench-") as scratch:
        for world in family.worlds(count, region):
            t0 = time.perf_counter()
            training_sim = simulate(train_params(world.params))
            training = training_sim.events.drop(columns=["incident_id"])
            sim = simulate(world.params)
            frame = sim.events.drop(columns=["incident_id"])
            # The world's ASN database, as an operator would supply one: written as an .mmdb, read back by maxminddb.
            db = Path(scratch) / f"world-{world.index}.mmdb"
            write_ip_db(sim, db)  # one population: the training stream's addresses are in the same networks
            resolver = open_ip_db([db])
            trained = {
                with_db: train_model(training, TrainingParams(seed=0), networks=resolver if with_db else PREFIXES)
                for with_db in (True, False)
            }
            for name, per_world, with_db, history in SETUPS:
                model, learned = trained[with_db] if per_world else (shipped, None)
                alerts, _ = replay(
                    frame,
                    model,
                    baselines=copy.deepcopy(learned) if history and learned is not None else None,
                    networks=resolver if with_db else PREFIXES,
                )
                result = evaluate(alerts, sim.events, sim.incidents, model.spec.length_s, sim.lookalikes)
                results[name].append(result)
                worlds.append(_world_row(world.index, name, result, len(frame), len(alerts)))
                if name == SETUPS[0][0]:
                    missed += [f"world {world.index}: {i.threat}: {i.variant or '-'}: {i.description[:120]}"
                               for i in result.missed]  # fmt: skip
            console.print(
                f"world {world.index}: {len(training):,} training + {len(frame):,} test events, recall "
                + ", ".join(f"{results[name][-1].recall:.2f}" for name, *_ in SETUPS)
                + f", {time.perf_counter() - t0:.0f} s"
            )
    figures = {name: across_worlds(evals) for name, evals in results.items()}
    report = {
        "mode": region,
        "size": args.size,
        "family": {
            "seed": family.seed,
            "region": region,
            "worlds": count,
            "minutes": minutes,
            "browsers": browsers,
            "services": family.services,
            "offices": family.offices,
            "incidents_per_threat": incidents,
        },
        "headline_model": SETUPS[0][0],
        "setups": [{"name": n, "trained_per_world": t, "ip_db": d, "history": h} for n, t, d, h in SETUPS],
        "figures": figures,
        "worlds": worlds,
        "world_draws": [w.draws for w in family.worlds(count, region)],
        "missed": missed,
        "shipped_model": shipped.version,
        "duration_s": round(time.perf_counter() - started, 1),
        "python": platform.python_version(),
    }
    print(markdown(report))  # plain: rich would re-wrap the table rows
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))


def _pct(r: dict[str, Any]) -> str:
    lo, hi = r["ci95"]
    value = r["rate"]
    shown = "-" if value is None else f"{100 * value:.2f} %"
    return f"{shown} ({r['count']}/{r['of']}; {100 * lo:.2f} to {100 * hi:.2f} %)"


def markdown(report: dict[str, Any]) -> str:
    """The held-out figures as the markdown tables docs/detection.md shows."""
    figures = report["figures"]
    region = {"heldout": "held-out"}.get(report["family"]["region"], report["family"]["region"])
    lines = []
    for which, f in figures.items():
        ttd = f["median_time_to_detect_s"]
        lines += [
            f"**{which.replace('_', ' ')}** — {f['worlds']} {region} worlds: recall {_pct(f['recall'])}, median world "
            f"{f['median_world_recall']:.2f}, worst world {f['worst_world_recall']:.2f}; median time to detect "
            f"{'-' if ttd is None else f'{ttd:.1f} s'}",
            "",
            "| threat | incidents | detected | recall (95 % CI) | median world | worst world | median s to detect |",
            "|---|---:|---:|---|---:|---:|---:|",
        ]
        for name, t in f["threats"].items():
            med = t["median_s_to_detect"]
            lines.append(
                f"| {name} | {t['incidents']} | {t['detected']} | {_pct(t['recall'])} | "
                f"{t['median_world_recall']:.2f} | {t['worst_world_recall']:.2f} | "
                f"{'-' if med is None else f'{med:.1f}'} |"
            )
        lines += ["", "| benign entities alerted | rate (alerted/benign; 95 % CI) | worst world |", "|---|---|---:|"]
        for label, r in f["benign_alerted"].items():
            worst = r["worst_world_rate"]
            lines.append(f"| {label} | {_pct(r)} | {'-' if worst is None else f'{100 * worst:.2f} %'} |")
        lines += ["", "| benign look-alike | entity | alerted (95 % CI) |", "|---|---|---|"]
        for kind, by_type in f["lookalikes"].items():
            for entity_type, r in by_type.items():
                lines.append(f"| {kind} | {entity_type} | {_pct(r)} |")
        lines += ["", "| attack variant | detected (95 % CI) |", "|---|---|"]
        for name, r in f["variants"].items():
            lines.append(f"| {name} | {_pct(r)} |")
        lines.append("")
    return "\n".join(lines)


def development(args: argparse.Namespace) -> None:
    console = Console(stderr=True)
    model = load_model(args.model_dir)
    per_threat: dict[str, dict[str, Any]] = {t: {"incidents": 0, "detected": 0, "times": []} for t in THREATS}
    totals = {k: 0 for k in ("benign_tokens", "benign_tokens_alerted", "benign_ips", "benign_ips_alerted",
                             "benign_subjects", "benign_subjects_alerted", "alerts", "false_alerts")}  # fmt: skip
    missed: list[str] = []
    started = time.perf_counter()
    for seed in args.seeds:
        sim = simulate(SimulationParams(seed=seed, **EVALUATION))
        alerts, _ = replay(sim.events.drop(columns=["incident_id"]), model)
        result = evaluate(alerts, sim.events, sim.incidents, model.spec.length_s)
        for name, threat in result.threats.items():
            per_threat[name]["incidents"] += threat.incidents
            per_threat[name]["detected"] += threat.detected
            per_threat[name]["times"] += threat.times_to_detect
        summary: dict[str, Any] = result.summary()
        for key in totals:
            totals[key] += summary[key]
        missed += [f"seed {seed}: {m.threat}: {m.description[:140]}" for m in result.missed]
        console.print(f"seed {seed}: {len(sim.events):,} events, {len(alerts)} alerts")
    table = Table("threat", "incidents", "detected", "recall", "median s to detect", "max s", title="detection")
    all_times: list[float] = []
    rows = []
    for name, row in per_threat.items():
        times = row["times"]
        all_times += times
        recall = row["detected"] / row["incidents"] if row["incidents"] else float("nan")
        med = float(np.median(times)) if times else None
        mx = float(np.max(times)) if times else None
        rows.append({"threat": name, "incidents": row["incidents"], "detected": row["detected"], "recall": recall,
                     "median_s": med, "max_s": mx})  # fmt: skip
        table.add_row(name, str(row["incidents"]), str(row["detected"]), f"{recall:.2f}",
                      f"{med:.1f}" if med is not None else "-", f"{mx:.1f}" if mx is not None else "-")  # fmt: skip
    Console().print(table)
    incidents = sum(r["incidents"] for r in per_threat.values())
    detected = sum(r["detected"] for r in per_threat.values())
    figures = {
        "recall": detected / incidents,
        "median_time_to_detect_s": float(np.median(all_times)) if all_times else None,
        "benign_token_share": totals["benign_tokens_alerted"] / totals["benign_tokens"],
        "benign_ip_share": totals["benign_ips_alerted"] / totals["benign_ips"],
        "benign_subject_share": totals["benign_subjects_alerted"] / totals["benign_subjects"],
        **totals,
    }
    Console().print(json.dumps({k: round(v, 5) if isinstance(v, float) else v for k, v in figures.items()}, indent=1))
    for line in missed:
        Console().print(f"missed — {line}")
    Console().print(
        f"model {model.version} · seeds {args.seeds} · {platform.python_version()} · "
        f"{time.perf_counter() - started:.0f} s"
    )
    if args.out:
        report = {"mode": "development", "threats": rows, "figures": figures, "missed": missed, "model": model.version,
                  "seeds": args.seeds, "evaluation": EVALUATION}  # fmt: skip
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
