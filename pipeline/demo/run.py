"""``jwtwatch demo``: simulated services and attackers against the real loop, live, then a report.

1. simulate a few minutes of labelled traffic (``pipeline.simulate``: a small population, six threats);
2. start the loop — :class:`~pipeline.nodes.AllInOne`, as ``jwtwatch serve`` runs it, on the demo's clock
   (:mod:`~pipeline.demo.clock`): the validator and the alerts service on one loopback port, the detection
   pipeline, auto-revocation at or above a severity, the archive;
3. register a webhook with the alerts service's admin API, pointing at a local receiver that verifies
   every signature;
4. play the traffic as real HTTP requests with real signed tokens, minutes of event time in seconds of
   wall time, while a live view shows what happens;
5. drain, stop, and write the report (``pipeline.demo.report``).
"""

from __future__ import annotations

import logging
import secrets
import shutil
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

from pipeline.demo.clock import DemoClock
from pipeline.demo.receiver import PATH, WebhookReceiver
from pipeline.demo.tokens import TokenMinter
from pipeline.demo.traffic import TrafficPlayer, TrafficStats, event_rows
from pipeline.errors import DemoError
from pipeline.events import Alert
from pipeline.keys import KeyStore
from pipeline.nodes import AllInOne, ServeOptions
from pipeline.response.policy import ResponsePolicy
from pipeline.serving.server import background_server
from pipeline.simulate import Simulation, SimulationParams, simulate
from pipeline.validation.config import ValidatorConfig

MARKER = ".jwtwatch-demo"  # the demo only ever deletes a directory it made
#: The simulated clients send through the demo's traffic player on loopback, which plays the gateway.
GATEWAY = "127.0.0.1/32"
#: What the former ``jwtwatch demo`` (now ``jwtwatch validator demo``) left in data/demo, before the marker.
_FORMER_DEMO = {"keys", "attacker-keys", "events.jsonl", "revocations.sqlite", "revocations.sqlite-wal",
                "revocations.sqlite-shm"}  # fmt: skip


@dataclass(frozen=True)
class DemoOptions:
    data_dir: Path = Path("data/demo")
    report_dir: Path | None = None  # default: DATA_DIR/report
    minutes: float = 8.0
    speed: float = 10.0
    seed: int = 7
    users: int = 40
    revoke_min_severity: str = "high"
    workers: int = 4
    live: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.minutes <= 60:
            raise DemoError(f"--minutes must be between 1 and 60, got {self.minutes}")
        if not 1 <= self.speed <= 100:
            raise DemoError(f"--speed must be between 1 and 100, got {self.speed}")
        if not 5 <= self.users <= 500:
            raise DemoError(f"--users must be between 5 and 500, got {self.users}")
        if self.seed < 0:
            raise DemoError("--seed must be >= 0")

    @property
    def report(self) -> Path:
        return self.report_dir if self.report_dir is not None else self.data_dir / "report"

    def simulation(self, start: float) -> SimulationParams:
        return SimulationParams(
            minutes=self.minutes,
            seed=self.seed,
            start=start,
            browsers=self.users,
            mobile=max(2, self.users // 2),
            services=2,
            offices=3,
        )


@dataclass
class DemoRun:
    """Everything the report needs, gathered while the demo ran."""

    options: DemoOptions
    sim: Simulation
    traffic: TrafficStats
    receiver: WebhookReceiver
    clock: DemoClock
    alerts: list[Alert] = field(default_factory=list)  # alert/1 records, latest state of each
    revocations_auto: int = 0
    revocations_suppressed: int = 0
    model_version: str = ""
    thresholds: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0
    traffic_wall_s: float = 0.0
    drained: bool = True


class AlertsSeen:
    """The alerts the pipeline published so far, each in its latest state (the node's ``on_alert``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._alerts: dict[str, Alert] = {}

    def __call__(self, alert: Alert) -> None:
        with self._lock:
            self._alerts[alert.alert_id] = alert  # an escalation replaces the earlier state

    def __len__(self) -> int:
        with self._lock:
            return len(self._alerts)

    def latest(self) -> list[Alert]:
        with self._lock:
            return list(self._alerts.values())


def prepare(data_dir: Path) -> None:
    """An empty data dir: made fresh, or emptied if an earlier demo made it — never anything else."""
    if data_dir.exists():
        if not data_dir.is_dir():
            raise DemoError(f"{data_dir} exists and is not a directory")
        names = {entry.name for entry in data_dir.iterdir()}
        if names and MARKER not in names and not names <= _FORMER_DEMO:
            raise DemoError(
                f"{data_dir} is not empty and was not made by jwtwatch demo; pick another --data-dir (nothing deleted)"
            )
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True)
    (data_dir / MARKER).write_text("made by jwtwatch demo; deleted and re-made by the next run\n")


def run_demo(options: DemoOptions, console: Console) -> DemoRun:
    started = time.monotonic()
    data_dir = options.data_dir
    prepare(data_dir)
    # Quiet the services' INFO logs: the live view is the demo's voice. Warnings still show.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("pipeline.response.responder").setLevel(logging.ERROR)  # each revocation: in the live view
    start = float(int(time.time()))  # event time starts now: timestamps, dates and partitions look current
    with console.status("simulating traffic…"):
        sim = simulate(options.simulation(start))
        rows = event_rows(sim.events)
    clock = DemoClock(start, options.speed)
    params = sim.params
    alerts, admin_token = AlertsSeen(), secrets.token_urlsafe(32)
    with console.status("starting the validator, the pipeline and the alerts service…"):
        issuer_keys = KeyStore.init(data_dir / "issuer-keys", alg="ES256", issuer=params.issuer)
        node = _start_node(options, params, admin_token, clock, alerts)
    receiver = WebhookReceiver()
    player = TrafficPlayer("", admin_token, TokenMinter(issuer_keys), clock, workers=options.workers)
    run = DemoRun(options, sim, player.stats, receiver, clock, model_version=node.model.version)
    run.thresholds = {t: float(s.threshold_) for t, s in node.model.scorers.items()}
    with ExitStack() as stack:
        url = stack.enter_context(background_server(node.app))  # the validator and the alerts service, one port
        receiver_url = stack.enter_context(background_server(receiver.app()))
        receiver.secret = _subscribe(url, admin_token, receiver_url + PATH)
        player.url = url
        node.start()
        try:
            traffic_started = time.monotonic()
            _play_live(player, rows, node, alerts, run, console)
            run.traffic_wall_s = time.monotonic() - traffic_started
            clock.finish(start + params.duration_s)
            with console.status("draining: the pipeline scores the last windows, the outbox delivers…"):
                run.drained = node.drain()
        finally:
            player.stop.set()
            node.stop()
    run.alerts = sorted(alerts.latest(), key=lambda a: a.ts)
    run.revocations_auto = node.responder.revoked
    run.revocations_suppressed = node.responder.suppressed
    run.wall_s = time.monotonic() - started
    return run


def _start_node(
    options: DemoOptions, params: SimulationParams, admin_token: str, clock: DemoClock, alerts: AlertsSeen
) -> AllInOne:
    """``jwtwatch serve``'s node on the demo's clock: the validator judges tokens and the responder dates
    revocations in simulated event time; it always auto-revokes, from the severity asked."""
    data_dir = options.data_dir
    config = ValidatorConfig(
        issuer=params.issuer, audience=params.audience, jwks_file=data_dir / "issuer-keys" / "jwks.json"
    )
    serve = ServeOptions(
        config=config,
        data_dir=data_dir,
        model_dir=_model_dir(),
        admin_token=admin_token,
        trusted_proxies=GATEWAY,
        policy=ResponsePolicy(enabled=True, min_severity=options.revoke_min_severity),
        # minutes of event time pass in seconds: deliver and archive sooner than a real deployment would
        delivery_interval_s=0.2,
        archive_flush_s=5.0,
    )
    return AllInOne(serve, clock=clock, on_alert=alerts)


def _model_dir() -> Path:
    return Path(__file__).resolve().parent.parent.parent / "models" / "default"


def _subscribe(alerts_url: str, admin_token: str, target: str) -> str:
    """Register the receiver through the alerts service's admin API; returns the signing secret."""
    response = httpx.post(
        f"{alerts_url}/v1/webhooks",
        json={"url": target, "event_types": ["token.anomaly", "token.revoked", "revocation.storm"]},
        headers={"Authorization": f"Bearer {admin_token}"},
        timeout=10,
    )
    if response.status_code != 201:
        raise DemoError(f"the alerts service refused the webhook: {response.status_code} {response.text[:200]}")
    secret: str = response.json()["secret"]
    return secret


def _play_live(
    player: TrafficPlayer,
    rows: list[dict[str, Any]],
    node: AllInOne,
    alerts: AlertsSeen,
    run: DemoRun,
    console: Console,
) -> None:
    errors: list[BaseException] = []

    def play() -> None:
        try:
            player.play(rows)
        except BaseException as exc:  # reported below, in the main thread
            errors.append(exc)
            player.stop.set()

    thread = threading.Thread(target=play, name="traffic", daemon=True)
    progress = Progress(TextColumn("event time"), BarColumn(), TextColumn("{task.description}"), console=console)
    task = progress.add_task("", total=run.sim.params.duration_s)
    start = run.clock.start

    def view() -> Group:
        now = run.clock()
        wall = time.monotonic() - wall0
        minutes = f"{(now - start) / 60:4.1f} of {run.sim.params.minutes:g} min"
        progress.update(task, completed=now - start, description=f"{minutes} · {wall:4.0f} s wall")
        return Group(progress, _live_table(player.stats, node, alerts, run))

    wall0 = time.monotonic()
    thread.start()
    try:
        if run.options.live and console.is_terminal:
            with Live(get_renderable=view, console=console, refresh_per_second=4, transient=False):
                while thread.is_alive():
                    thread.join(0.25)
        else:
            next_line = 0.0
            while thread.is_alive():
                thread.join(0.25)
                if time.monotonic() - wall0 >= next_line:
                    next_line += 10.0
                    s = player.stats
                    console.print(f"  {(run.clock() - start) / 60:4.1f} min event time: {s.answered} requests, "
                                  f"{len(alerts)} alerts, {node.responder.revoked} revocations")  # fmt: skip
    except KeyboardInterrupt:
        player.stop.set()
        thread.join()
        raise
    if errors:
        raise errors[0]


def _live_table(stats: TrafficStats, node: AllInOne, seen: AlertsSeen, run: DemoRun) -> Table:
    alerts = seen.latest()
    by_severity = {s: sum(1 for a in alerts if a.severity == s) for s in ("low", "medium", "high", "critical")}
    receiver = run.receiver
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    table.add_row("requests", f"{stats.answered} answered · [green]{stats.accepted} accepted[/] · "
                  f"[red]{stats.rejected} rejected[/] · pipeline lag {node.lag()}")  # fmt: skip
    table.add_row("alerts", f"{len(alerts)}  (" + ", ".join(f"{n} {s}" for s, n in by_severity.items()) + ")")
    table.add_row("revocations", f"{node.responder.revoked} automatic · {stats.logouts} logouts")
    table.add_row("webhooks", f"[green]{receiver.verified} verified[/] · {receiver.refused} refused")
    table.add_row(
        "stolen tokens", f"[bold]{stats.blocked['attacker']}[/] attacker requests refused after auto-revocation "
        f"({stats.blocked['owner']} of their owners')",
    )  # fmt: skip
    for alert in alerts[-4:]:
        said = alert.summary or ""
        if len(said) > 110:
            said = said[:109] + "…"
        table.add_row(
            f"[{_COLOUR[alert.severity]}]{alert.severity}[/]",
            # Escaped: a summary quotes entity names, which are data, never console markup.
            f"{escape(said)} · {alert.action}",
        )
    return table


_COLOUR = {"low": "cyan", "medium": "yellow", "high": "red", "critical": "bold red"}
