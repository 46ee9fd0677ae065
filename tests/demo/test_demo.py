"""`jwtwatch demo` as a user runs it: one process, real HTTP on loopback, a report and an archive at the end.

The demo runs once per test session (short traffic, fast clock) and the tests read what it left behind:
the report, its summary, and the Parquet archive the notebooks also read (tests/system/test_notebooks.py).
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pytest

from pipeline.archive import partitions, read_archive
from tests.support.demo import SHORT, demo_data_dir, jwtwatch


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo_data_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def summary(demo: Path) -> dict:
    return json.loads((demo / "report" / "summary.json").read_text())


def test_the_report_page_shows_plots_that_exist(demo: Path) -> None:
    index = demo / "report" / "index.html"
    page = index.read_text()
    images = re.findall(r'<img src="([^"]+)"', page)
    assert {"traffic.png", "scores.png", "detection.png", "reasons.png"} <= set(images)
    for name in images:
        assert (index.parent / name).read_bytes().startswith(b"\x89PNG\r\n\x1a\n"), name
    assert "report:" in (demo / "finished.txt").read_text()  # the path is printed at the end


def test_the_report_lists_the_alerts_with_their_summaries(demo: Path) -> None:
    alerts = read_archive(demo, "alerts")
    assert len(alerts) and alerts["summary"].notna().all()  # every archived alert carries its one line
    page = (demo / "report" / "index.html").read_text()
    assert "<th>summary</th>" in page
    shown = [s for s in set(alerts["summary"]) if html.escape(s) in page]
    assert shown, "the report's alert table shows the alerts' summaries"


def test_the_archive_holds_events_features_scores_and_alerts(demo: Path) -> None:
    for data_dir in (demo, demo / "report"):  # the report carries a copy of its data
        held = partitions(data_dir)
        assert set(held["kind"]) == {"events", "features", "scores", "alerts"}
        assert set(held.loc[held["kind"] == "features", "entity_type"]) == {"jti", "sub", "ip"}
    events = read_archive(demo, "events")
    assert {"accepted", "rejected"} <= set(events["outcome"])
    # Forged tokens met the real verifier: each kind of forgery got its own reason.
    assert {"bad_signature", "unknown_kid", "alg_not_allowed", "malformed"} <= set(events["reason"].dropna())


def test_a_stolen_token_is_detected_revoked_and_then_refused(demo: Path, summary: dict) -> None:
    caught = [s for s in summary["stolen_tokens"] if s["revoked"] and s["attacker_rejected_after"] > 0]
    assert caught and summary["stolen_tokens_caught"] == len(caught)
    # The same story, read from the archive alone: an alert revoked a token, and later uses were refused.
    alerts = read_archive(demo, "alerts")
    events = read_archive(demo, "events")
    revoking = alerts[(alerts["action"] == "revoked") & alerts["jti"].notna()]
    refused_later = 0
    for alert in revoking.itertuples():
        uses = events[(events["jti"] == alert.jti) & (events["ts"] > alert.ts)]
        refused = uses[uses["reason"] == "revoked"]
        refused_later += len(refused)
        if len(refused):  # once refused, the token never works again
            assert not (uses.loc[uses["ts"] > refused["ts"].min(), "outcome"] == "accepted").any()
    assert refused_later > 0


def test_webhooks_arrived_signed_and_verified(summary: dict) -> None:
    webhooks = summary["webhooks"]
    assert webhooks["verified"] > 0 and webhooks["refused"] == 0
    assert webhooks["by_type"].get("token.anomaly", 0) > 0
    assert webhooks["by_type"].get("token.revoked", 0) > 0  # auto-revocations came back as events too


def test_the_summary_counts_what_the_validator_saw(demo: Path, summary: dict) -> None:
    events = read_archive(demo, "events")
    assert summary["events"] == len(events)
    assert summary["accepted"] + summary["rejected"] == len(events)
    assert {row["threat"] for row in summary["threats"]} == {
        "stolen_replay", "token_sharing", "forged_probing", "revoked_replay", "rate_abuse", "low_and_slow"
    }  # fmt: skip
    reasons = events.loc[events["outcome"] == "rejected", "reason"].astype(str).value_counts()
    assert summary["rejection_reasons"] == {str(k): int(v) for k, v in reasons.items()}


def test_demo_help_explains_the_options() -> None:
    result = jwtwatch("demo", "--help")
    assert result.returncode == 0
    for option in ("--minutes", "--speed", "--seed", "--data-dir", "--report-dir", "--revoke-min-severity"):
        assert option in result.stdout


def test_demo_refuses_to_empty_a_directory_it_did_not_make(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    result = jwtwatch("demo", "--data-dir", str(tmp_path), *SHORT)
    assert result.returncode == 2
    assert "not made by jwtwatch demo" in result.stderr and "Traceback" not in result.stderr
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_demo_takes_over_the_data_dir_of_the_former_validator_demo(tmp_path: Path) -> None:
    from pipeline.demo.run import prepare

    (tmp_path / "keys").mkdir()
    (tmp_path / "events.jsonl").write_text("{}\n")
    prepare(tmp_path)  # what `jwtwatch demo` wrote before it ran the whole loop: safe to replace
    assert not (tmp_path / "events.jsonl").exists()


def test_bad_options_are_refused_before_anything_runs(tmp_path: Path) -> None:
    result = jwtwatch("demo", "--data-dir", str(tmp_path / "d"), "--speed", "0")
    assert result.returncode == 2 and "--speed" in result.stderr
    assert not (tmp_path / "d").exists()


def test_the_validator_walkthrough_still_runs_green(tmp_path: Path) -> None:
    result = jwtwatch("validator", "demo", "--data-dir", str(tmp_path / "validator-demo"))
    assert result.returncode == 0, result.stderr
    assert "every token got the answer it should" in result.stdout
    assert (tmp_path / "validator-demo" / "events.jsonl").read_text().count("\n") == 8
