"""Detection quality on traffic the model never saw: recall per threat, benign share alerted, time to detect.

    python -m bench.detection [--model-dir models/default] [--seeds 7 8 9] [--out F.json]

Each evaluation stream uses a different seed from training (seed 1) *and* different simulator
parameters (population mix, offices, incidents per threat). Alerts come from the same code path as
``jwtwatch detect`` (pipeline.detection.replay) and are matched to the labelled incidents by
pipeline.detection.evaluate.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from pipeline.detection.evaluate import evaluate
from pipeline.detection.replay import replay
from pipeline.scoring.model import load_model
from pipeline.simulate import THREATS, SimulationParams, simulate

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "models" / "default"

# Unlike the training traffic (defaults, seed 1): more mobile users, more offices, more services.
EVALUATION = dict(minutes=30, browsers=400, mobile=200, services=25, offices=12, incidents_per_threat=8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--seeds", type=int, nargs="+", default=[7, 8, 9])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    console = Console(stderr=True)
    model = load_model(args.model_dir)
    per_threat = {t: {"incidents": 0, "detected": 0, "times": []} for t in THREATS}
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
        summary = result.summary()
        for key in totals:
            totals[key] += summary[key]
        missed += [f"seed {seed}: {m.threat}: {m.description[:140]}" for m in result.missed]
        console.print(f"seed {seed}: {len(sim.events):,} events, {len(alerts)} alerts")
    table = Table("threat", "incidents", "detected", "recall", "median s to detect", "max s", title="detection")
    all_times = []
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
        args.out.write_text(json.dumps({"threats": rows, "figures": figures, "missed": missed, "model": model.version,
                                        "seeds": args.seeds, "evaluation": EVALUATION}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
