"""The history `jwtwatch train` writes and `jwtwatch detect` / the streaming runner start from, read back from disk:
hostile or damaged files are one clear error, never a traceback, and never a history that silently switches
detection off (a NaN time keeps every network from ever settling: novelty 0 for ever)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.detection.history import load_baselines, save_baselines
from pipeline.features.baselines import Baselines


def good() -> dict:
    baselines = Baselines()
    baselines.observe_use("alice", "web", "AS64500", "Chrome", 1_790_000_000.0)
    baselines.learn_client_rate("web", 30.0)
    baselines.learn_ip_subjects("10.0.0.1", 2.0)
    return baselines.to_dict()


def test_a_saved_history_reads_back_alike(tmp_path: Path) -> None:
    baselines = Baselines.from_dict(good())
    save_baselines(baselines, tmp_path / "h.json")
    assert load_baselines(tmp_path / "h.json").to_dict() == baselines.to_dict()


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ('{"format": 1, "now": NaN}', "NaN"),
        ('{"format": 1, "now": Infinity}', "Infinity"),
        ("[" * 100_000 + "]" * 100_000, "RecursionError|format"),
        ('{"format": 1, "now": 1' + "0" * 400 + "}", "OverflowError|number|defaults"),
        ("\udcff".encode("utf-8", "surrogatepass").decode("latin-1"), "JSON|Expecting|history"),
    ],
)
def test_hostile_history_text_is_a_value_error(tmp_path: Path, text: str, why: str) -> None:
    path = tmp_path / "h.json"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    with pytest.raises(ValueError, match=why):
        load_baselines(path)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda d: d.update(now=float("nan")), "now"),
        (lambda d: d.update(settle_s="900"), "settle_s"),
        (lambda d: d.update(now=True), "now"),
        (lambda d: d.update(defaults=[1, 2]), "defaults"),
        (lambda d: d.update(subjects=[]), "subjects"),
        (lambda d: d["subjects"]["alice"].update(client=["web"]), "client"),
        (lambda d: d["subjects"]["alice"].update(prefixes={"AS64500": "yesterday"}), "prefixes"),
        (lambda d: d["subjects"]["alice"].update(rate=1e300), "rate"),
        (lambda d: d.update(clients={"web": None}), "clients"),
        (lambda d: d.update(ips="10.0.0.1"), "ips"),
    ],
)
def test_a_history_of_wrong_types_or_unusable_numbers_is_refused_naming_the_field(change, field: str) -> None:
    data = json.loads(json.dumps(good()))
    change(data)
    with pytest.raises(ValueError, match=field):
        Baselines.from_dict(data)
