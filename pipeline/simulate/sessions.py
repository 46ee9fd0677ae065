"""When clients call: sessions of page loads (think time within, idle time between), each page load a burst of
API calls, and which network a client is on at each call. In bulk (numpy), client-major and time-sorted within a
client."""

from __future__ import annotations

import numpy as np

CALL_GAP_S = 0.12  # mean gap between the API calls of one page load
MAX_PAGE_SPREAD_S = 1.5  # a page load's calls all fall within this many seconds
MIN_GAP_S = 2.0  # minimum gap between two page loads of one client (keeps calls time-sorted)


def session_pages(
    rng: np.random.Generator, n: int, horizon: float, think: float, pages: float, idle: float
) -> dict[str, np.ndarray]:
    """Page-load times of ``n`` clients over ``[0, horizon)``: sessions of pages separated by think time,
    sessions separated by idle time. A client may be mid-session at t=0 (``ongoing``)."""
    p_end = 1.0 / pages
    session_len = pages * think
    in_session = session_len / (session_len + idle)
    ongoing = rng.random(n) < in_session
    first = np.where(ongoing, rng.exponential(think, n), rng.exponential(idle, n))
    mean_gap = (1 - p_end) * (MIN_GAP_S + think) + p_end * (MIN_GAP_S + idle)
    width = max(8, int(horizon / mean_gap * 1.3) + 8)

    times = [first[:, None]]
    ends: list[np.ndarray] = []
    current = first
    while True:
        end = rng.random((n, width)) < p_end
        gaps = np.where(
            end,
            MIN_GAP_S + rng.exponential(idle, (n, width)),
            MIN_GAP_S + rng.gamma(2.0, think / 2.0, (n, width)),
        )
        ends.append(end)
        block = current[:, None] + np.cumsum(gaps, axis=1)
        current = block[:, -1]
        if n == 0 or current.min() >= horizon:
            times.append(block[:, :-1])
            break
        times.append(block)
    t = np.hstack(times)
    end_after = np.hstack(ends)[:, : t.shape[1]]
    start = np.empty_like(end_after)
    start[:, 0] = ~ongoing
    start[:, 1:] = end_after[:, :-1]
    valid = t < horizon
    rows = np.broadcast_to(np.arange(n)[:, None], t.shape)
    return {
        "client": rows[valid],
        "t": t[valid],
        "start": start[valid],
        "last": end_after[valid],
        "ongoing": ongoing,
    }


def sessions_chunked(
    rng: np.random.Generator, n: int, horizon: float, think: float, pages: float, idle: float
) -> dict[str, np.ndarray]:
    """:func:`session_pages` in chunks of clients, so that memory stays bounded for large populations."""
    chunk = 2048
    parts = []
    for lo in range(0, max(n, 1), chunk):
        hi = min(n, lo + chunk)
        part = session_pages(rng, hi - lo, horizon, think, pages, idle)
        part["client"] = part["client"] + lo
        parts.append(part)
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def pages_to_calls(
    rng: np.random.Generator, pages: dict[str, np.ndarray], calls_per_page: float, horizon: float
) -> dict[str, np.ndarray]:
    """Each page load becomes a burst of API calls within ~1 s; returns per-call arrays (client-major)."""
    n_pages: int = pages["t"].shape[0]
    # A session id per page: every client's first page opens one (ongoing or not), as does every start.
    first_of_client = np.ones(n_pages, dtype=bool)
    first_of_client[1:] = pages["client"][1:] != pages["client"][:-1]
    session = np.cumsum(pages["start"] | first_of_client) - 1

    k = 1 + rng.poisson(calls_per_page - 1.0, n_pages)
    page = np.repeat(np.arange(n_pages), k)
    page_start = np.cumsum(k) - k
    pos = np.arange(page.shape[0]) - page_start[page]
    gaps = rng.exponential(CALL_GAP_S, page.shape[0])
    gaps[pos == 0] = 0.0
    spread = np.cumsum(gaps)
    spread -= spread[page_start][page]
    t = pages["t"][page] + np.minimum(spread, MAX_PAGE_SPREAD_S)
    keep = t < horizon
    last_of_page = pos == (k[page] - 1)
    calls = {
        "client": pages["client"][page],
        "t": t,
        "session": session[page],
        "session_start": pages["start"][page] & (pos == 0),
        "session_last": pages["last"][page] & last_of_page,
    }
    return {key: value[keep] for key, value in calls.items()}


def episode_lookup(
    ep_client: np.ndarray, ep_start: np.ndarray, ep_ip: np.ndarray, client: np.ndarray, t: np.ndarray, horizon: float
) -> np.ndarray:
    """The IP in force for each (client, t): the latest episode of that client starting at or before t.
    Every client must have an episode starting at 0."""
    span = horizon + 10.0
    ep_key = ep_client.astype(np.float64) * span + ep_start
    order = np.argsort(ep_key, kind="stable")
    ep_key = ep_key[order]
    idx = np.searchsorted(ep_key, client.astype(np.float64) * span + t, side="right") - 1
    ips: np.ndarray = ep_ip[order][idx]
    return ips


__all__ = [
    "CALL_GAP_S",
    "MAX_PAGE_SPREAD_S",
    "MIN_GAP_S",
    "episode_lookup",
    "pages_to_calls",
    "session_pages",
    "sessions_chunked",
]
