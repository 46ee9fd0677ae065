"""bench/results.json and docs/performance.md: the doc is the rendering of the committed results (so it cannot drift
from them), the results carry every figure issue 7 names, and ``python -m bench`` runs end to end (a --quick smoke
run of two benchmarks)."""

from __future__ import annotations

import copy
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import report, suite
from tests.support.paths import REPO

RESULTS = REPO / "bench" / "results.json"
DOC = REPO / "docs" / "performance.md"
#: The headline's shape — which keys hold sub-figures — as bench.suite builds it.
SHAPE = suite.headline({})


@pytest.fixture
def results() -> dict[str, Any]:
    return json.loads(RESULTS.read_text(encoding="utf-8"))


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _headline_values(data: dict[str, Any]) -> dict[str, Any]:
    values = {}
    for key in suite.HEADLINE_KEYS:
        if isinstance(SHAPE[key], dict):
            for sub in SHAPE[key]:
                values[f"{key}.{sub}"] = data[key][sub]
        else:
            values[key] = data[key]
    return values


# ----------------------------------------------------------------------------------------- rendering


def test_every_placeholder_of_the_template_is_a_defined_figure() -> None:
    names = report.placeholders(report.TEMPLATE.read_text(encoding="utf-8"))
    assert len(names) > 100
    assert [name for name in names if name not in report.FIGURES] == []


def test_the_template_renders_with_every_placeholder_filled(results: dict[str, Any]) -> None:
    text = report.render(results)
    assert not re.search(r"\$\{?\w", text), "a placeholder was left in the rendering"
    assert "Generated from `bench/results.json` by `python -m bench.report`" in text.split("\n## ")[0]
    assert results["machine"]["cpu_model"] in text.split("\n## ")[0]
    assert f"| `http_validate_rps` | {round(results['http_validate_rps']):,} req/s |" in text
    assert f"**{results['time_to_revoke_p99_s']:.3f} s**" in text
    # the prose of the sections is all still there
    for heading in ("## Validator (issue 2)", "### Where the time goes", "### Streaming runner",
                    "## Time to revoke (issue 4)", "## Kafka (issue 5)", "## HTTP forward-auth (issue 7)"):  # fmt: skip
        assert heading in text


@pytest.mark.parametrize(
    ("drop", "placeholder", "key"),
    [
        (("details", "http", "workers_1", "p99_ms"), "h_w1_p99", "details.http.workers_1.p99_ms"),
        (("http_validate_rps",), "http_validate_rps", "http_validate_rps"),
        (("details", "pipeline", "memory"), "p_bytes_per_entity", "details.pipeline.memory"),
        (("runs", "kafka"), "kafka_measured_at", "runs.kafka"),
    ],
)
def test_a_missing_figure_is_an_error_naming_the_placeholder_and_the_key(
    results: dict[str, Any], drop: tuple[str, ...], placeholder: str, key: str
) -> None:
    broken = copy.deepcopy(results)
    node = broken
    for part in drop[:-1]:
        node = node[part]
    del node[drop[-1]]
    with pytest.raises(report.ReportError) as caught:
        report.render(broken)
    message = str(caught.value)
    assert key in message and f"${{{placeholder}}}" in message, message


def test_a_figure_that_was_not_measured_is_an_error(results: dict[str, Any]) -> None:
    results["time_to_revoke_p99_s"] = None
    with pytest.raises(report.ReportError, match=r"time_to_revoke_p99_s.*not measured"):
        report.render(results)


def test_an_unknown_placeholder_or_a_stray_dollar_is_an_error(results: dict[str, Any]) -> None:
    with pytest.raises(report.ReportError, match=r"\$\{no_such_figure\}"):
        report.render(results, "text ${no_such_figure} text")
    with pytest.raises(report.ReportError, match=r"\$\$"):
        report.render(results, "costs $ 5")
    assert report.render(results, "costs $$5") == "costs $5"


# ------------------------------------------------------------------------------- the committed files


def test_docs_performance_md_is_the_rendering_of_bench_results_json(results: dict[str, Any]) -> None:
    assert DOC.read_text(encoding="utf-8") == report.render(results), (
        "docs/performance.md differs from the rendering of bench/results.json: edit bench/performance.md.in "
        "(not the doc) and run `.venv/bin/python -m bench.report`"
    )


def test_results_json_carries_every_figure_the_issue_names(results: dict[str, Any]) -> None:
    for key in suite.HEADLINE_KEYS:
        assert key in results
    for figure, value in _headline_values(results).items():
        assert _is_number(value), f"{figure} = {value!r}"
    assert not results["quick"], "the committed results are a --quick smoke run"
    assert "failed" not in results, results.get("failed")
    # the headline is what the reports say, and every benchmark ran with its full parameters
    assert {k: results[k] for k in suite.HEADLINE_KEYS} == suite.headline(results["details"])
    for bench in suite.BENCHES:
        assert bench.name in results["details"], bench.name
        run = results["runs"][bench.name]
        assert run["parameters"] == bench.parameters(quick=False), bench.name
        assert run["measured_at"] and run["command"].startswith(f"python -m {bench.module}")
        assert set(run["load_average"]) == {"before", "during_1min", "after"}
    for key in ("date", "command", "machine"):
        assert results[key]
    assert results["machine"]["cpus"] >= 1
    assert {t.figure for t in suite.TARGETS} == set(results["targets"])


# ------------------------------------------------------------------------------------ python -m bench


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_python_m_bench_quick_runs_two_benchmarks_and_merges(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    # An earlier (--quick) result of another benchmark: --only keeps it.
    kept = {"http_validate_rps": 1234.5, "http_validate_p99_ms": 6.5, "workers": 1}
    out.write_text(json.dumps({"quick": True, "details": {"http": kept}, "runs": {"http": {"measured_at": "then"}}}))
    doc_before = DOC.read_bytes()
    proc = _bench("--only", "validator,time_to_revoke", "--quick", "--out", str(out), timeout=200)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert DOC.read_bytes() == doc_before, "a --quick run into another file must not render docs/performance.md"
    data = json.loads(out.read_text())
    assert data["quick"] is True
    assert list(data["details"]) == ["validator", "time_to_revoke", "http"]
    assert data["details"]["http"] == kept and data["runs"]["http"] == {"measured_at": "then"}
    values = _headline_values(data)
    for figure in ("validator_tokens_per_s.first_seen", "validator_tokens_per_s.reused",
                   "validator_vs_pyjwt.first_seen", "validator_vs_pyjwt.reused", "time_to_revoke_p99_s"):  # fmt: skip
        assert _is_number(values[figure]), (figure, values[figure])
    assert values["http_validate_rps"] == 1234.5
    assert {values[f"pipeline_events_per_s.{sub}"] for sub in SHAPE["pipeline_events_per_s"]} == {None}
    for name in ("validator", "time_to_revoke"):
        run = data["runs"][name]
        assert run["quick"] is True and run["parameters"] == suite.BY_NAME[name].parameters(quick=True)
        assert run["duration_s"] > 0 and run["git"]["commit"]
    assert data["details"]["time_to_revoke"]["trials"] == 3
    assert "✓ validator" in proc.stdout and "✓ time_to_revoke" in proc.stdout


def test_python_m_bench_reports_a_benchmark_that_cannot_run_and_keeps_the_others(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    out.write_text(json.dumps({"quick": True, "details": {"time_to_revoke": {"p99_s": 1.5}}, "runs": {}}))
    no_wrk = tmp_path / "bin"
    no_wrk.mkdir()
    (no_wrk / "git").symlink_to("/usr/bin/git")
    proc = _bench("--only", "http", "--quick", "--out", str(out), env={**os.environ, "PATH": str(no_wrk)})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "wrk is not installed" in proc.stdout
    data = json.loads(out.read_text())
    assert "wrk is not installed" in data["failed"]["http"]["error"]
    assert data["time_to_revoke_p99_s"] == 1.5 and data["http_validate_rps"] is None


def test_python_m_bench_refuses_unknown_benchmarks_and_mixing_quick_with_full(tmp_path: Path) -> None:
    unknown = _bench("--only", "validator,nope", "--out", str(tmp_path / "r.json"))
    assert unknown.returncode == 2 and "nope" in unknown.stderr and "time_to_revoke" in unknown.stderr
    full = tmp_path / "full.json"
    full.write_text(json.dumps({"quick": False, "details": {"validator": {}}}))
    mixed = _bench("--only", "validator", "--quick", "--out", str(full))
    assert mixed.returncode == 2 and "refusing to merge" in mixed.stdout


def _bench(*args: str, timeout: float = 60, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m bench ARGS`` from the repository root, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "bench", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env
    )
