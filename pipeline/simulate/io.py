"""Writing simulated traffic to files: token-usage/1 events and the incident labels.

The only module of ``pipeline.simulate`` that touches the file system. Output is byte-for-byte reproducible:
the same simulation gives the same files (gzip headers carry no time stamp or file name).

* :func:`write_events` — ``.jsonl`` / ``.jsonl.gz`` (one token-usage/1 object per line, exactly as
  :meth:`pipeline.events.TokenUsage.to_json` writes it) or ``.parquet`` (``TOKEN_USAGE_ARROW``). The label
  column ``incident_id`` is never written: event files look like what a validator emits.
* :func:`write_labels` / :func:`read_labels` — JSON Lines, one object per :class:`Incident`.
* :func:`write_ip_db` — the world's networks (:attr:`Simulation.networks`) as a MaxMind DB file, for
  ``--ip-db``: ``autonomous_system_number``, ``autonomous_system_organization`` (as GeoLite2-ASN) and
  jwtwatch's ``network_kind`` per network.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from itertools import repeat
from pathlib import Path
from typing import IO, Any

import orjson
import pandas as pd
import pyarrow.parquet as pq

from pipeline.events import TOKEN_USAGE_ARROW, TOKEN_USAGE_SCHEMA, TokenUsage, format_ts, parse_ts, to_arrow_table
from pipeline.files import atomic_file
from pipeline.simulate.mix import record_columns
from pipeline.simulate.model import Incident, Simulation

LABEL_SCHEMA = "sim-incident/1"
#: ``database_type`` of the MaxMind DB files :func:`write_ip_db` writes.
IP_DB_TYPE = "jwtwatch-sim-ASN"
_CHUNK = 262_144
_WIRE_ORDER = [f.name for f in dataclasses.fields(TokenUsage)]  # key order of TokenUsage.to_dict()


def _events(sim_or_df: Simulation | pd.DataFrame) -> pd.DataFrame:
    return sim_or_df.events if isinstance(sim_or_df, Simulation) else sim_or_df


def event_format(path: str | os.PathLike[str]) -> str:
    """``"jsonl"``, ``"jsonl.gz"`` or ``"parquet"`` from a file name; anything else is an error."""
    name = Path(path).name.lower()
    for suffix in ("jsonl.gz", "jsonl", "parquet"):
        if name.endswith("." + suffix):
            return suffix
    raise ValueError(f"{path}: unknown event file type (use .jsonl, .jsonl.gz or .parquet)")


@contextmanager
def _atomic(path: Path) -> Iterator[IO[bytes]]:
    """Write to a sibling temp file and move it into place, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, 0o644) as f:
        yield f


def write_events(sim_or_df: Simulation | pd.DataFrame, path: str | os.PathLike[str]) -> int:
    """Write the events as token-usage/1 (format by suffix); returns the number of events written."""
    events = _events(sim_or_df)
    path = Path(path)
    kind = event_format(path)
    if kind == "parquet":
        _write_parquet(events, path)
    else:
        with _atomic(path) as raw:
            if kind == "jsonl.gz":
                with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as gz:
                    buffered = io.BufferedWriter(gz, buffer_size=1 << 20)  # gzip pays per write() call
                    _write_jsonl(events, buffered)
                    buffered.flush()
                    buffered.detach()
            else:
                _write_jsonl(events, raw)
    return len(events)


def _write_jsonl(events: pd.DataFrame, out: IO[bytes]) -> None:
    """Newline-terminated token-usage/1 JSON lines, keys in :meth:`TokenUsage.to_dict` order.

    Each line goes to ``out`` as soon as it is made: holding many small ``orjson`` outputs alive at once is
    several times slower than streaming them."""
    keys = ["schema", *_WIRE_ORDER]
    dumps = orjson.dumps
    newline = orjson.OPT_APPEND_NEWLINE
    write = out.write
    for lo in range(0, len(events), _CHUNK):
        columns = record_columns(events.iloc[lo : lo + _CHUNK])
        ordered = [columns[name] for name in _WIRE_ORDER]
        for row in zip(repeat(TOKEN_USAGE_SCHEMA), *ordered):
            write(dumps(dict(zip(keys, row, strict=False)), option=newline))


def _write_parquet(events: pd.DataFrame, path: Path) -> None:
    with _atomic(path) as raw, pq.ParquetWriter(raw, TOKEN_USAGE_ARROW) as writer:
        if len(events) == 0:
            writer.write_table(TOKEN_USAGE_ARROW.empty_table())
        for lo in range(0, len(events), _CHUNK * 4):
            writer.write_table(to_arrow_table(events.iloc[lo : lo + _CHUNK * 4]))


# ------------------------------------------------------------------------------------------ labels


def label_dict(incident: Incident, events: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "schema": LABEL_SCHEMA,
        "incident_id": incident.incident_id,
        "threat": incident.threat,
        "start": format_ts(incident.start),
        "end": format_ts(incident.end),
        "start_epoch": incident.start,
        "end_epoch": incident.end,
        "subs": list(incident.subs),
        "jtis": list(incident.jtis),
        "ips": list(incident.ips),
        "description": incident.description,
    }
    if incident.variant:  # optional: how the attack was mounted (network kind, user agent, owner overlap)
        out["variant"] = incident.variant
    if events is not None:
        out["events"] = events
    return out


def write_labels(sim: Simulation | Iterable[Incident], path: str | os.PathLike[str]) -> int:
    """One JSON object per incident (``start``/``end`` as RFC 3339 and as epoch seconds); returns the count.

    Given a :class:`Simulation`, each line also says how many events carry the incident's label."""
    if isinstance(sim, Simulation):
        incidents = sim.incidents
        counts = sim.events["incident_id"].value_counts().to_dict()
        lines = [label_dict(i, int(counts.get(i.incident_id, 0))) for i in incidents]
    else:
        lines = [label_dict(i) for i in sim]
    with _atomic(Path(path)) as raw:
        for line in lines:
            raw.write(orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE))
    return len(lines)


def _label(data: Any, where: str) -> Incident:
    if not isinstance(data, dict):
        raise ValueError(f"{where}: a label must be a JSON object")
    if data.get("schema", LABEL_SCHEMA) != LABEL_SCHEMA:
        raise ValueError(f"{where}: schema {data.get('schema')!r} is not {LABEL_SCHEMA!r}")
    try:

        def moment(name: str) -> float:
            epoch = data.get(f"{name}_epoch")
            return float(epoch) if epoch is not None else parse_ts(data[name]).timestamp()

        def names(name: str) -> tuple[str, ...]:
            values = data.get(name, [])
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                raise ValueError(f"{name!r} must be a list of strings")
            return tuple(values)

        return Incident(
            incident_id=str(data["incident_id"]),
            threat=str(data["threat"]),
            start=moment("start"),
            end=moment("end"),
            subs=names("subs"),
            jtis=names("jtis"),
            ips=names("ips"),
            description=str(data.get("description", "")),
            variant=str(data.get("variant", "")),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{where}: bad label ({exc!r})") from None


def read_labels(path: str | os.PathLike[str]) -> list[Incident]:
    """The incidents written by :func:`write_labels`."""
    out: list[Incident] = []
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                data = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not JSON ({exc})") from None
            out.append(_label(data, f"{path}:{number}"))
    return out


# ------------------------------------------------------------------------------------------ networks


def write_ip_db(sim: Simulation, path: str | os.PathLike[str]) -> int:
    """The world's networks as a MaxMind DB that ``--ip-db`` reads; returns the number of networks written.
    Byte-for-byte reproducible: the build epoch is the simulation's start, not the clock."""
    from pipeline.networks import write_mmdb

    table = sim.networks
    rows = [
        (cidr, {"autonomous_system_number": int(asn), "autonomous_system_organization": org, "network_kind": kind})
        for cidr, asn, org, kind in zip(
            table["network"].tolist(), table["asn"].tolist(), table["org"].tolist(), table["kind"].tolist(),
            strict=True,
        )
    ]  # fmt: skip
    return write_mmdb(
        path,
        rows,
        database_type=IP_DB_TYPE,
        description=f"jwtwatch simulator networks (seed {sim.params.seed}); made-up ASNs and organisations",
        build_epoch=int(sim.params.start),
    )
