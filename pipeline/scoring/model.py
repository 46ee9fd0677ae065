"""A detection model on disk: one skops file per forest (never pickle) plus ``model.json`` metadata.

The model version is a hash of the metadata that determines behaviour (feature lists, thresholds,
training data hash, parameters, library versions) — not of the time it was made — so retraining the
same data with the same seed reproduces the same version, and alert ids stay stable across replays.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import skops.io as sio
from sklearn.ensemble import IsolationForest

from pipeline.errors import ModelError
from pipeline.features import FEATURES
from pipeline.files import atomic_path, atomic_write
from pipeline.scoring import EntityScorer
from pipeline.windows import WindowSpec

FORMAT = 1
METADATA_FILE = "model.json"


@dataclass
class DetectionModel:
    scorers: dict[str, EntityScorer]
    spec: WindowSpec
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def version(self) -> str:
        version: str = self.metadata["version"]
        return version


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def model_version(metadata: dict[str, Any]) -> str:
    hashed = {k: v for k, v in metadata.items() if k not in {"version", "created_at", "files"}}
    return hashlib.sha256(_canonical(hashed)).hexdigest()[:16]


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def finalize_metadata(model: DetectionModel) -> dict[str, Any]:
    """Complete the metadata (window, scorers, format) and stamp the version — the model is then usable
    in memory exactly as it will be after saving and loading."""
    metadata = dict(model.metadata)
    metadata["format"] = FORMAT
    metadata["window"] = {
        "length_s": model.spec.length_s,
        "bucket_s": model.spec.bucket_s,
        "grace_s": model.spec.grace_s,
        "max_distinct": model.spec.max_distinct,
    }
    metadata["scorers"] = {t: s.summary() for t, s in model.scorers.items()}
    metadata.pop("files", None)
    metadata["version"] = model_version(metadata)
    model.metadata = metadata
    return metadata


def save_model(model: DetectionModel, directory: Path) -> str:
    """Write the model into ``directory`` (created if needed); returns its version."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    files = {}
    for entity_type, scorer in model.scorers.items():
        name = f"forest-{entity_type}.skops"
        with atomic_path(directory / name, 0o644) as tmp:  # a model is not a secret
            sio.dump(scorer.forest_, tmp, compression=zipfile.ZIP_DEFLATED, compresslevel=9)
        files[name] = _file_sha256(directory / name)
    metadata = finalize_metadata(model)
    metadata["files"] = files
    model.metadata = metadata
    atomic_write(directory / METADATA_FILE, (json.dumps(metadata, indent=2, sort_keys=True) + "\n").encode(), 0o644)
    version: str = metadata["version"]
    return version


def load_model(directory: Path) -> DetectionModel:
    """Load and check a model directory; every problem is a :class:`ModelError` with a clear message."""
    try:
        return _load_model(Path(directory))
    except ModelError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, OSError) as exc:
        raise ModelError(f"{directory}: not a usable jwtwatch model ({type(exc).__name__}: {exc})") from None


def _load_model(directory: Path) -> DetectionModel:
    meta_path = directory / METADATA_FILE
    try:
        metadata = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise ModelError(
            f"{directory} holds no model ({METADATA_FILE} missing; train one with `jwtwatch train`)"
        ) from None
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read {meta_path}: {exc}") from None
    if not isinstance(metadata, dict):
        raise ModelError(f"{meta_path}: not a JSON object")
    if metadata.get("format") != FORMAT:
        raise ModelError(f"{meta_path}: unsupported model format {metadata.get('format')!r}")
    if model_version(metadata) != metadata.get("version"):
        raise ModelError(f"{meta_path}: metadata does not match its version hash (edited by hand?)")
    spec = WindowSpec(**metadata["window"])
    if set(metadata["scorers"]) != set(FEATURES):
        raise ModelError(
            f"{meta_path}: the model must score every entity type {sorted(FEATURES)}, has {sorted(metadata['scorers'])}"
        )
    scorers: dict[str, EntityScorer] = {}
    for entity_type, summary in metadata["scorers"].items():
        if tuple(summary["features"]) != FEATURES.get(entity_type):
            raise ModelError(
                f"model's {entity_type} features differ from this jwtwatch's; retrain with `jwtwatch train`"
            )
        name = f"forest-{entity_type}.skops"
        path = directory / name
        if not path.exists() or _file_sha256(path) != metadata["files"].get(name):
            raise ModelError(f"{path} is missing or does not match the hash in {METADATA_FILE}")
        untrusted = [t for t in sio.get_untrusted_types(file=path) if not t.startswith(("sklearn.", "numpy."))]
        if untrusted:
            raise ModelError(f"{path} contains types that are not scikit-learn's: {untrusted}")
        forest = sio.load(path, trusted=sio.get_untrusted_types(file=path))
        if not isinstance(forest, IsolationForest):
            raise ModelError(f"{path} does not hold an IsolationForest")
        scorer = EntityScorer.from_summary(entity_type, summary, forest)
        scorers[entity_type] = scorer
    return DetectionModel(scorers, spec, metadata)
