"""What the engine learned of subjects, clients and IPs (``Baselines``), on disk: written whole or not at all.

``jwtwatch train`` writes it beside the model (``HISTORY_FILE``) and ``jwtwatch detect`` starts from it; the
streaming runner keeps its own under the data dir.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.features.baselines import Baselines
from pipeline.files import atomic_write

#: The history ``jwtwatch train`` writes into the model directory.
HISTORY_FILE = "baselines.json"


def save_baselines(baselines: Baselines, path: Path) -> None:
    """Write atomically: a crash leaves the previous file, never half of one. Owner-only: it names subjects."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(baselines.to_dict()).encode(), 0o600)


def load_baselines(path: Path) -> Baselines:
    """Raises ``ValueError`` (with the reason) for a file that is not a history jwtwatch wrote."""
    try:
        data = json.loads(path.read_text(), parse_constant=_refuse_constant)
        return Baselines.from_dict(data)
    except (RecursionError, OverflowError, UnicodeDecodeError) as exc:  # ValueError (JSON, from_dict) passes as is
        raise ValueError(f"not a jwtwatch history: {type(exc).__name__}") from None


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number a history holds")
