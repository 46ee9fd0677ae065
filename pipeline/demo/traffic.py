"""Playing simulated traffic against the real validator over HTTP, in (compressed) event time.

Each simulated event becomes one ``GET /v1/validate`` with a real bearer token, sent by a pool of worker
threads with keep-alive connections, as a gateway doing forward-auth would: ``X-Forwarded-For`` carries
the simulated client address (the validator believes it because the demo lists loopback as a trusted
proxy), ``X-Forwarded-Method``/``-Uri``/``-Host`` the protected request. The validator emits the usage
event — the traffic player never writes one itself.

A simulated logout (the first ``revoked`` use of a token) is carried out for real first: the player revokes
the token through the validator's admin API, as an identity provider's logout hook would.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import pandas as pd

from pipeline.demo.clock import DemoClock
from pipeline.demo.tokens import TokenMinter

log = logging.getLogger(__name__)

_DONE = None


@dataclass
class TrafficStats:
    sent: int = 0
    answered: int = 0
    accepted: int = 0
    rejected: int = 0
    errors: int = 0
    logouts: int = 0
    #: Requests the simulation expected to pass but the validator refused (tokens the pipeline revoked),
    #: by whose they were: ``attacker`` (an incident's request) or ``owner``.
    blocked: Counter[str] = field(default_factory=Counter)


def event_rows(events: pd.DataFrame) -> list[dict[str, Any]]:
    """Simulated events as plain dicts (None for missing values, Python ints for times)."""
    frame = events.astype(object).where(events.notna(), None)
    return frame.to_dict("records")  # type: ignore[return-value]  # the column names are str


class TrafficPlayer:
    def __init__(
        self,
        validator_url: str,
        admin_token: str,
        minter: TokenMinter,
        clock: DemoClock,
        *,
        workers: int = 4,
    ) -> None:
        self.url = validator_url
        self.admin_token = admin_token
        self.minter = minter
        self.clock = clock
        self.workers = workers
        self.stats = TrafficStats()
        self.stop = threading.Event()
        # Small: the clock may run ahead of queued requests by at most this many events.
        self._queue: queue.Queue[tuple[dict[str, Any], str] | None] = queue.Queue(maxsize=workers * 2)
        self._lock = threading.Lock()
        self._revoked: set[str] = set()

    def play(self, rows: list[dict[str, Any]]) -> TrafficStats:
        """Send every row at its event time; returns when every request has been answered."""
        threads = [threading.Thread(target=self._work, name=f"traffic-{i}", daemon=True) for i in range(self.workers)]
        for thread in threads:
            thread.start()
        self.clock.begin()
        with httpx.Client(base_url=self.url, timeout=10) as admin:
            for row in rows:
                if self.stop.is_set():
                    break
                ts = row["ts"] / 1000.0
                self.clock.wait_until(ts, self.stop)
                if row["reason"] == "revoked" and row["jti"] and row["jti"] not in self._revoked:
                    self._logout(admin, row["jti"])
                token = self.minter.token_for(row)
                self.clock.reached(ts)
                self._queue.put((row, token))
                self.stats.sent += 1
        for _ in threads:
            self._queue.put(_DONE)
        for thread in threads:
            thread.join()
        return self.stats

    def _logout(self, admin: httpx.Client, jti: str) -> None:
        response = admin.post(
            "/v1/revocations",
            json={"kind": "jti", "value": jti, "reason": "logout"},
            headers={"Authorization": f"Bearer {self.admin_token}"},
        )
        if response.status_code != 201:
            log.warning("logout revocation of %s failed: %s %s", jti, response.status_code, response.text[:200])
        self._revoked.add(jti)
        self.stats.logouts += 1

    def _work(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as http:
            while (item := self._queue.get()) is not _DONE:
                row, token = item
                try:
                    response = http.get("/v1/validate", headers=_headers(row, token))
                except httpx.HTTPError as exc:
                    log.warning("request failed: %s", exc)
                    with self._lock:
                        self.stats.errors += 1
                    continue
                self._count(row, response.status_code == 200)

    def _count(self, row: Mapping[str, Any], ok: bool) -> None:
        with self._lock:
            stats = self.stats
            stats.answered += 1
            if ok:
                stats.accepted += 1
                return
            stats.rejected += 1
            if row["reason"] is None:
                stats.blocked["attacker" if row.get("incident_id") else "owner"] += 1


def _headers(row: Mapping[str, Any], token: str) -> dict[str, str]:
    headers = {
        "Authorization": f"Bearer {token}",
        "X-Forwarded-For": row["ip"],
        "X-Forwarded-Method": row["method"] or "GET",
        "X-Forwarded-Uri": row["path"] or "/",
        "X-Forwarded-Host": row["service"] or "api",
    }
    if row["user_agent"]:
        headers["User-Agent"] = row["user_agent"]
    return headers
