"""``jwtwatch serve``: validator, detection pipeline and alerts service in one process, on one port.

The embedded default. Everything talks over the in-process bus exactly as it would over Kafka:
validations publish usage events; the streaming runner scores them, applies the auto-revocation policy
and publishes alerts (and revocations); the alerts service consumes both and delivers signed webhooks
from its SQLite outbox, and publishes analysts' verdicts, which the runner follows. Revocations reach the
validator's store directly — it is the same process.

The metrics of both services are not on that port (their per-reason counters would tell a caller why a token
failed) but in :attr:`AllInOne.metrics_app`, for the metrics listener (``--metrics-port``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from pipeline.alerts import AlertsConsumer, AlertsService, AlertsWorker, create_alerts_app
from pipeline.archive import ArchiveConsumer, ArchiveWriter, ScoreRecorder
from pipeline.bus import VERDICTS
from pipeline.bus.memory import MemoryBus
from pipeline.detection.runner import StreamingRunner
from pipeline.loop import BackgroundLoop
from pipeline.networks import PREFIXES, NetworkResolver, describe, identity_warning
from pipeline.response.policy import AutoRevoker, ResponsePolicy
from pipeline.response.responder import Responder
from pipeline.scoring.model import load_model
from pipeline.validation.app import create_validator_app
from pipeline.validation.config import ValidatorConfig
from pipeline.validation.follower import RevocationFollower
from pipeline.validation.revocation_feed import FeedSigner, FeedVerifier, open_or_create_keys
from pipeline.validation.service import ValidatorService
from pipeline.web import metrics_app

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


class AllInOne:
    def __init__(self, options: ServeOptions) -> None:
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
        )
        self.model = load_model(options.model_dir)
        # Revocations travel signed even in one process: the same code, and the same guarantees, as over Kafka.
        keys = open_or_create_keys(Path(options.data_dir) / "revocation-keys")
        signer, verifier = FeedSigner(keys), FeedVerifier.from_store(keys)
        self.validator.signer = signer
        self.responder = Responder(AutoRevoker(options.policy), self.bus, issuer=options.config.issuer, signer=signer)
        self.follower = RevocationFollower(self.bus, self.validator.revocations, verifier=verifier)
        self.validator.feed = self.follower
        self.networks = options.networks
        log.info(describe(self.networks))
        warning = identity_warning(
            self.model.metadata.get("training", {}).get("network_identity"), self.networks.source
        )
        if warning:
            log.warning(warning)
        self.runner = StreamingRunner(
            self.bus,
            self.model,
            networks=self.networks,
            baselines_path=Path(options.data_dir) / "baselines.json",
            respond=self.responder,
            poll_timeout_s=0.05,
        )
        self.alerts = AlertsService(Path(options.data_dir), admin_token=options.admin_token, bus=self.bus)
        # The in-process bus starts empty: benign verdicts still in force are published again from the alert log
        # (compromised ones revoked when they were made), then the pipeline reads them all before scoring.
        for verdict in self.alerts.active_verdicts():
            self.bus.publish(VERDICTS, verdict.bus_key, verdict.to_json())
        self.runner.follow_verdicts(self.responder.revoke_for_verdict)
        self.alerts_consumer = AlertsConsumer(
            self.bus, self.alerts, parse_revocation=FeedVerifier.from_store(keys).verify
        )
        self.worker = AlertsWorker(self.alerts)
        self.archive = ArchiveConsumer(self.bus, ArchiveWriter(Path(options.data_dir)))
        # Window features and scores go to the archive beside events and alerts (the writer is thread-safe).
        self.runner.engine.on_scored = ScoreRecorder(self.archive.writer, self.model)
        self._loops = [
            BackgroundLoop("revocation-feed", self.follower.step),
            BackgroundLoop("archive", self.archive.step),
            BackgroundLoop("pipeline", self.runner.step),
            BackgroundLoop("alerts-consumer", self._consume_alerts),
        ]
        if self.validator.replay_feed is not None:  # one-time tokens: the same code as between instances
            self._loops.append(BackgroundLoop("replay-feed", self.validator.replay_feed.step))
        self.app = _Dispatcher(create_validator_app(self.validator), create_alerts_app(self.alerts))
        self.metrics_app = metrics_app(self.validator.registry, self.alerts.registry)

    def _consume_alerts(self) -> None:
        if self.alerts_consumer.step():
            self.worker.wake()  # deliver new alerts now, not at the worker's next tick

    def start(self) -> None:
        for loop in self._loops:
            loop.start()
        self.worker.start()

    def stop(self) -> None:
        """Stop the loops and close everything, flushing the archive and saving baselines; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        for loop in self._loops:
            loop.stop()
        self.worker.stop()
        self.runner.save_baselines()
        self.runner.close()
        self.alerts_consumer.close()
        self.follower.close()
        self.archive.close()
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
