"""``simulate()``: baseline + injected threats -> one sorted, labelled token-usage/1 DataFrame."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd

from pipeline.events import REASONS, TokenUsage
from pipeline.simulate.baseline import generate_baseline
from pipeline.simulate.injector import Injector
from pipeline.simulate.model import EVENT_COLUMNS, Simulation, SimulationParams
from pipeline.simulate.networks import network_table
from pipeline.simulate.tables import EventBatch, epoch_ms
from pipeline.simulate.threats import inject
from pipeline.simulate.world import AddressSpace, Api, Strings, stream, uuid4_strings

_OUTCOMES = np.array(["rejected", "accepted"], dtype=object)


def simulate(params: SimulationParams) -> Simulation:
    """Generate the traffic described by ``params``. Deterministic: same params, same ``events``."""
    strings = Strings()
    addresses = AddressSpace(strings, stream(params.population, "addresses"))
    api = Api(strings, stream(params.population, "api"))
    base = generate_baseline(params, strings, addresses, api)
    base_ids = uuid4_strings(stream(params.seed, "event-id:baseline"), len(base.events))
    injector = Injector(params, strings, addresses, api, base, base.tokens)
    inject(injector)

    events = EventBatch.concat([base.events, *injector.batches])
    event_ids = np.concatenate([base_ids, *injector.event_ids]) if injector.event_ids else base_ids
    ts = epoch_ms(params.start, events.t)
    order = np.argsort(ts, kind="stable")
    events = events.take(order)
    frame = _frame(params, strings, api, injector, events, ts[order], event_ids[order])
    lookalikes = pd.DataFrame(base.lookalikes, columns=["kind", "entity_type", "entity"], dtype=object)
    networks = network_table(params.population, addresses, strings, base.office_pools, base.ipv6_homes)
    return Simulation(
        events=frame, incidents=list(injector.incidents), params=params, lookalikes=lookalikes, networks=networks
    )


def _frame(
    params: SimulationParams,
    strings: Strings,
    api: Api,
    injector: Injector,
    events: EventBatch,
    ts: np.ndarray,
    event_ids: np.ndarray,
) -> pd.DataFrame:
    table = strings.table()  # object array, None last: table[-1] is null
    tokens = injector.tokens.arrays()
    n_tok = injector.tokens.size
    tok = np.where(events.token >= 0, events.token, n_tok)  # n_tok: the "no token" sentinel row

    def claim(name: str) -> np.ndarray:
        values: np.ndarray = table[np.append(tokens[name], -1)[tok]]
        return values

    def number(name: str) -> pd.arrays.IntegerArray:
        values = np.append(tokens[name], 0)[tok].astype(np.int64)
        present = np.append(tokens[f"has_{name}"], False)[tok]
        return pd.arrays.IntegerArray(values, ~present)

    jti = np.empty(n_tok + 1, dtype=object)
    jti[:n_tok] = tokens["jti"]
    jti[n_tok] = None
    methods, paths = api.arrays()
    reasons = np.array([*REASONS, None], dtype=object)
    incident_ids = np.array([i.incident_id for i in injector.incidents] + [None], dtype=object)
    service = np.empty(len(events), dtype=object)
    service[:] = params.api_host
    columns: dict[str, object] = {
        "event_id": event_ids,
        "ts": ts.astype(np.int64),
        "jti": jti[tok],
        "sub": claim("sub"),
        "iss": claim("iss"),
        "aud": claim("aud"),
        "client_id": claim("client_id"),
        "iat": number("iat"),
        "exp": number("exp"),
        "ip": table[events.ip],
        "user_agent": table[events.ua],
        "outcome": _OUTCOMES[(events.reason < 0).astype(np.int64)],
        "reason": reasons[events.reason],
        "service": service,
        "method": table[methods[events.endpoint]],
        "path": table[paths[events.endpoint]],
        "incident_id": incident_ids[events.incident],
    }
    data = {
        name: value if name in ("ts", "iat", "exp") else pd.Series(value, dtype=object, copy=False)
        for name, value in columns.items()
    }
    frame = pd.DataFrame(data, copy=False)
    return frame[list(EVENT_COLUMNS)]


# ------------------------------------------------------------------------------------------ records


def ts_strings(ts_ms: np.ndarray) -> np.ndarray:
    """Epoch milliseconds -> RFC 3339 strings exactly as :func:`pipeline.events.format_ts` writes them."""
    text = np.datetime_as_string(np.asarray(ts_ms, dtype=np.int64).astype("datetime64[ms]"), unit="ms")
    return np.char.add(text, "Z").astype(object)


def _nullable_ints(column: pd.Series) -> list[int | None]:
    return column.astype(object).where(column.notna(), None).tolist()


def record_columns(events: pd.DataFrame) -> dict[str, list[Any]]:
    """The token-usage/1 fields of ``events`` as Python lists (``ts`` as RFC 3339), ready for records."""
    out: dict[str, list[Any]] = {}
    for name in EVENT_COLUMNS:
        if name == "incident_id":
            continue
        column = events[name]
        if name == "ts":
            out[name] = ts_strings(column.to_numpy()).tolist()
        elif name in ("iat", "exp"):
            out[name] = _nullable_ints(column)
        else:
            out[name] = column.tolist()
    return out


def iter_records(sim: Simulation | pd.DataFrame, chunk: int = 65_536) -> Iterator[TokenUsage]:
    """The events as :class:`pipeline.events.TokenUsage` records, in ``ts`` order."""
    events = sim.events if isinstance(sim, Simulation) else sim
    names = [c for c in EVENT_COLUMNS if c != "incident_id"]
    for lo in range(0, len(events), chunk):
        columns = record_columns(events.iloc[lo : lo + chunk])
        for row in zip(*(columns[n] for n in names), strict=True):
            yield TokenUsage(**dict(zip(names, row, strict=True)))
