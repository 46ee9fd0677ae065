"""The records' Arrow schemas — the columns of the Parquet archive — and record batches or frames as Arrow tables."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import pyarrow as pa

from pipeline.events._records import Alert, AlertVerdict, Revocation, TokenUsage
from pipeline.events._time import parse_ts
from pipeline.events._vocabulary import ALERT_SCHEMA, REASONS, REVOCATION_SCHEMA, TOKEN_USAGE_SCHEMA, VERDICT_SCHEMA

if TYPE_CHECKING:
    import pandas as pd

_TS = pa.timestamp("ms", tz="UTC")

TOKEN_USAGE_ARROW = pa.schema(
    [
        ("event_id", pa.string()),
        ("ts", _TS),
        ("jti", pa.string()),
        ("sub", pa.string()),
        ("iss", pa.string()),
        ("aud", pa.string()),
        ("client_id", pa.string()),
        ("iat", pa.int64()),
        ("exp", pa.int64()),
        ("ip", pa.string()),
        ("user_agent", pa.string()),
        ("outcome", pa.dictionary(pa.int8(), pa.string())),
        ("reason", pa.dictionary(pa.int8(), pa.string())),
        ("service", pa.string()),
        ("method", pa.string()),
        ("path", pa.string()),
    ],
    metadata={"schema": TOKEN_USAGE_SCHEMA},
)

ALERT_ARROW = pa.schema(
    [
        ("alert_id", pa.string()),
        ("type", pa.string()),
        ("ts", _TS),
        ("entity_type", pa.string()),
        ("entity", pa.string()),
        ("sub", pa.string()),
        ("jti", pa.string()),
        ("ip", pa.string()),
        ("window_start", _TS),
        ("window_end", _TS),
        ("score", pa.float64()),
        ("severity", pa.string()),
        ("features_json", pa.string()),
        ("reasons_json", pa.string()),
        ("model_version", pa.string()),
        ("action", pa.string()),
        ("revocation_id", pa.string()),
        ("summary", pa.string()),
        ("network_source", pa.string()),
    ],
    metadata={"schema": ALERT_SCHEMA},
)

REVOCATION_ARROW = pa.schema(
    [
        ("revocation_id", pa.string()),
        ("kind", pa.string()),
        ("iss", pa.string()),
        ("value", pa.string()),
        ("reason", pa.string()),
        ("source", pa.string()),
        ("alert_id", pa.string()),
        ("created_at", _TS),
        ("expires_at", _TS),
        ("revoked_before", _TS),
        ("version", pa.int64()),
    ],
    metadata={"schema": REVOCATION_SCHEMA},
)

VERDICT_ARROW = pa.schema(
    [
        ("verdict_id", pa.string()),
        ("alert_id", pa.string()),
        ("verdict", pa.string()),
        ("ts", _TS),
        ("by", pa.string()),
        ("entity_type", pa.string()),
        ("entity", pa.string()),
        ("severity", pa.string()),
        ("rules", pa.list_(pa.string())),
        ("sub", pa.string()),
        ("jti", pa.string()),
        ("ip", pa.string()),
        ("note", pa.string()),
        ("suppress_until", _TS),
    ],
    metadata={"schema": VERDICT_SCHEMA},
)

_TS_COLUMNS = {
    TOKEN_USAGE_SCHEMA: ("ts",),
    ALERT_SCHEMA: ("ts", "window_start", "window_end"),
    REVOCATION_SCHEMA: ("created_at", "expires_at", "revoked_before"),
    VERDICT_SCHEMA: ("ts", "suppress_until"),
}


def to_arrow(records: Sequence[TokenUsage | Alert | Revocation | AlertVerdict]) -> pa.Table:
    """A batch of records of one type as an Arrow table with that type's schema (ValueError for a mix)."""
    if not records:
        raise ValueError("to_arrow needs at least one record to know its type")
    kind = records[0].SCHEMA
    schema = {
        TOKEN_USAGE_SCHEMA: TOKEN_USAGE_ARROW,
        ALERT_SCHEMA: ALERT_ARROW,
        REVOCATION_SCHEMA: REVOCATION_ARROW,
        VERDICT_SCHEMA: VERDICT_ARROW,
    }[kind]
    columns: dict[str, list[Any]] = {name: [] for name in schema.names}
    for record in records:
        if kind != record.SCHEMA:
            raise ValueError("to_arrow takes records of one type")
        row = record.to_dict()
        if kind == ALERT_SCHEMA:
            row["features_json"] = orjson.dumps(row.pop("features")).decode()
            row["reasons_json"] = orjson.dumps(row.pop("reasons")).decode()
        for ts_name in _TS_COLUMNS[kind]:
            if row.get(ts_name) is not None:
                row[ts_name] = parse_ts(row[ts_name])
        for name in schema.names:
            columns[name].append(row.get(name))
    return pa.table(columns, schema=schema)


#: The dictionary of the ``outcome`` column, in this order.
_OUTCOMES = ("accepted", "rejected")


def to_arrow_table(events: pd.DataFrame) -> pa.Table:
    """token-usage/1 events as columns (a frame: ``ts`` in epoch ms, the other fields by name, any further
    columns ignored) as an Arrow table with :data:`TOKEN_USAGE_ARROW`."""
    arrays: list[pa.Array] = []
    for field in TOKEN_USAGE_ARROW:
        column = events[field.name]
        if field.name == "ts":
            arrays.append(pa.array(column.to_numpy(dtype=np.int64), type=pa.int64()).cast(field.type))
        elif field.name in ("iat", "exp"):
            arrays.append(pa.array(column.array, type=pa.int64()))
        elif field.name == "outcome":
            arrays.append(_dictionary(column, _OUTCOMES))
        elif field.name == "reason":
            arrays.append(_dictionary(column, REASONS))
        else:
            arrays.append(_strings(column))
    return pa.Table.from_arrays(arrays, schema=TOKEN_USAGE_ARROW)


def _strings(column: pd.Series) -> pa.Array:
    return pa.array(column.to_numpy(dtype=object), type=pa.string(), from_pandas=True)


def _dictionary(column: pd.Series, values: tuple[str, ...]) -> pa.DictionaryArray:
    import pandas as pd  # only frames come here: the records' modules do not need pandas

    codes = pd.Categorical(column.to_numpy(dtype=object), categories=list(values)).codes.astype(np.int8)
    indices = pa.array(codes, type=pa.int8(), mask=codes < 0)
    return pa.DictionaryArray.from_arrays(indices, pa.array(values, type=pa.string()))


__all__ = ["ALERT_ARROW", "REVOCATION_ARROW", "TOKEN_USAGE_ARROW", "VERDICT_ARROW", "to_arrow", "to_arrow_table"]
