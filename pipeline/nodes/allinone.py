"""``jwtwatch serve``: validator, detection pipeline and alerts service in one process, on one port.

The embedded default. Everything talks over the in-process bus exactly as it would over Kafka:
validations publish usage events; the streaming runner scores them, applies the auto-revocation policy
and publishes alerts (and revocations); the alerts service consumes both and delivers signed webhooks
from its SQLite outbox, and publishes analysts' verdicts, which the runner follows. Revocations reach the
validator's store directly — it is the same process.

``jwtwatch demo`` runs the same node on its simulated clock (``clock``): the validator judges tokens and the
responder dates revocations in the demo's event time.

The metrics of both services are not on that port (their per-reason counters would tell a caller why a token
failed) but in :attr:`AllInOne.metrics_app`, for the metrics listener (``--metrics-port``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from pipeline.alerts import AlertsConsumer, AlertsService, AlertsWorker, create_alerts_app
from pipeline.archive import ArchiveConsumer
from pipeline.bus import VERDICTS
from pipeline.bus.memory import MemoryBus
from pipeline.detection.runner import StreamingRunner
from pipeline.events import Alert
from pipeline.loop import BackgroundLoop
from pipeline.networks import PREFIXES, NetworkResolver, describe, identity_warning
from pipeline.nodes.pipeline_node import PipelineNode, PipelineSettings
from pipeline.nodes.resources import FeedKeys
from pipeline.response.policy import ResponsePolicy
from pipeline.response.responder import Responder
from pipeline.revocations.feed import FeedSigner, open_or_create_keys
from pipeline.revocations.follower import RevocationFollower
from pipeline.scoring.model import DetectionModel, load_model
from pipeline.serving.web import metrics_app
from pipeline.validation.app import create_validator_app
from pipeline.validation.config import ValidatorConfig
from pipeline.validation.service import ValidatorService

log = logging.getLogger(__name__)

ALERTS_PREFIXES = ("/v1/webhooks", "/v1/alerts", "/v1/deliveries")


@dataclass
class ServeOptions:
    config: ValidatorConfig
    data_dir: Path
    model_dir: Path
    admin_token: str | None = None
    trusted_proxies: str | None = None
    events_out: Path | None = None
    policy: ResponsePolicy = field(default_factory=ResponsePolicy)
    #: Where client addresses' networks come from (``--ip-db``; the /16 prefixes without).
    networks: NetworkResolver = PREFIXES
    #: The webhook worker looks at the outbox at least this often (it is woken at once for a new alert).
    delivery_interval_s: float = 1.0
    #: The archive writes its Parquet files at least this often.
    archive_flush_s: float = 10.0


class AllInOne:
    """Built ready to :meth:`start`; :meth:`stop` closes everything.

    ``clock``: the time the validator judges tokens by and the responder dates revocations with (the demo's
    simulated event time; default the wall clock). ``model``: the detection model, if already loaded (default:
    read from ``options.model_dir``). ``on_alert`` sees each alert as the pipeline publishes it."""

    def __init__(
        self,
        options: ServeOptions,
        *,
        clock: Callable[[], float] = time.time,
        model: DetectionModel | None = None,
        on_alert: Callable[[Alert], None] | None = None,
    ) -> None:
        self.options = options
        self._stopped = False
        self.bus = MemoryBus()
        self.validator = ValidatorService(
            options.config,
            data_dir=options.data_dir,
            bus=self.bus,
            events_out=options.events_out,
            trusted_proxies=options.trusted_proxies,
            admin_token=options.admin_token,
            clock=clock,
        )
        self.model = model if model is not None else load_model(options.model_dir)
        # Revocations travel signed even in one process: the same code, and the same guarantees, as over Kafka.
        keys = open_or_create_keys(Path(options.data_dir) / "revocation-keys")
        feed = FeedKeys(keys, FeedSigner(keys))
        self.validator.signer = feed.signer
        self.follower = RevocationFollower(self.bus, self.validator.revocations, verifier=feed.verifier())
        self.validator.feed = self.follower
        self.networks = options.networks
        log.info(describe(self.networks))
        warning = identity_warning(
            self.model.metadata.get("training", {}).get("network_identity"), self.networks.source
        )
        if warning:
            log.warning(warning)
        self.alerts = AlertsService(Path(options.data_dir), admin_token=options.admin_token, bus=self.bus)
        # The in-process bus starts empty: benign verdicts still in force are published again from the alert log
        # (compromised ones revoked when they were made), then the pipeline reads them all before scoring.
        for verdict in self.alerts.active_verdicts():
            self.bus.publish(VERDICTS, verdict.bus_key, verdict.to_json())
        self.pipeline = PipelineNode(
            self.bus,
            self.model,
            PipelineSettings(
                issuer=options.config.issuer,
                data_dir=Path(options.data_dir),
                policy=options.policy,
                networks=self.networks,
                archive_group="jwtwatch-archive",
                poll_timeout_s=0.05,
                archive_flush_s=options.archive_flush_s,
            ),
            signer=feed.signer,
            clock=clock,
            on_alert=on_alert,
        )
        self.alerts_consumer = AlertsConsumer(self.bus, self.alerts, parse_revocation=feed.verifier().verify)
        self.worker = AlertsWorker(self.alerts, interval_s=options.delivery_interval_s)
        self._loops = [
            BackgroundLoop("revocation-feed", self.follower.step),
            *self.pipeline.loops,
            BackgroundLoop("alerts-consumer", self._consume_alerts),
        ]
        if self.validator.replay_feed is not None:  # one-time tokens: the same code as between instances
            self._loops.append(BackgroundLoop("replay-feed", self.validator.replay_feed.step))
        self.app = _Dispatcher(create_validator_app(self.validator), create_alerts_app(self.alerts))
        self.metrics_app = metrics_app(self.validator.registry, self.alerts.registry)

    @property
    def runner(self) -> StreamingRunner:
        return self.pipeline.runner

    @property
    def responder(self) -> Responder:
        return self.pipeline.responder

    @property
    def archive(self) -> ArchiveConsumer:
        return self.pipeline.archive

    def _consume_alerts(self) -> None:
        if self.alerts_consumer.step():
            self.worker.wake()  # deliver new alerts now, not at the worker's next tick

    def start(self) -> None:
        for loop in self._loops:
            loop.start()
        self.worker.start()

    def lag(self) -> int:
        """Messages published but not yet processed: usage events by the pipeline, alerts by the outbox."""
        total = 0
        for consumer in (self.runner.consumer, self.alerts_consumer.consumer):
            positions, ends = consumer.positions(), consumer.end_offsets()
            total += sum(max(0, end - positions.get(tp, 0)) for tp, end in ends.items())
        return total

    def drain(self, timeout_s: float = 30.0) -> bool:
        """Wait until the pipeline has scored everything and the outbox has nothing left to deliver; False if it
        has not within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.lag() == 0 and self.follower.caught_up and self.alerts.pending_count() == 0:
                time.sleep(0.5)  # one more quiet round: the runner flushes its last tick when the bus is quiet
                if self.lag() == 0 and self.alerts.pending_count() == 0:
                    return True
            time.sleep(0.1)
        return False

    def stop(self) -> None:
        """Stop the loops and close everything, flushing the archive and saving baselines; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        for loop in self._loops:
            loop.stop()
        self.worker.stop()
        self.pipeline.close()
        self.alerts_consumer.close()
        self.follower.close()
        self.alerts.close()
        self.validator.close()
        self.bus.close()


class _Dispatcher:
    """One port: the alerts service's paths go to its app, everything else to the validator's."""

    def __init__(self, validator: ASGIApp, alerts: ASGIApp) -> None:
        self.validator = validator
        self.alerts = alerts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        target = self.alerts if path.startswith(ALERTS_PREFIXES) else self.validator
        await target(scope, receive, send)
