"""The whole jwtwatch loop in one process, as ``jwtwatch serve`` wires it, on the demo's clock.

validator (HTTP) → usage events on the in-process bus → streaming runner (windows, Isolation Forest,
rules) → responder (auto-revocation policy) → alerts and signed revocations on the bus → the validator's
revocation follower enforces them; the alerts service delivers both as Standard Webhooks from its
SQLite outbox; the archive keeps events, window features, scores and alerts as Parquet.

It is ``pipeline.allinone.AllInOne`` with one difference: the validator and the responder read the
demo's clock (simulated event time) instead of the wall clock — so it is composed here from the same
parts rather than reused.
"""

from __future__ import annotations

import secrets
import threading
import time
from pathlib import Path

from pipeline.alerts import AlertsConsumer, AlertsService, AlertsWorker, create_alerts_app
from pipeline.archive import ArchiveConsumer, ArchiveWriter, ScoreRecorder
from pipeline.bus.memory import MemoryBus
from pipeline.demo.clock import DemoClock
from pipeline.detection.runner import StreamingRunner
from pipeline.events import Alert
from pipeline.loop import BackgroundLoop
from pipeline.response.policy import AutoRevoker, ResponsePolicy
from pipeline.response.responder import Responder
from pipeline.scoring.model import load_model
from pipeline.validation.app import create_validator_app
from pipeline.validation.config import ValidatorConfig
from pipeline.validation.follower import RevocationFollower
from pipeline.validation.keystore import KeyStore
from pipeline.validation.revocation_feed import FeedSigner, FeedVerifier, open_or_create_keys
from pipeline.validation.service import ValidatorService

#: The simulated clients send through the demo's traffic player on loopback, which plays the gateway.
GATEWAY = "127.0.0.1/32"


class DemoLoop:
    def __init__(
        self,
        data_dir: Path,
        *,
        clock: DemoClock,
        issuer: str,
        audience: str,
        model_dir: Path,
        policy: ResponsePolicy,
    ) -> None:
        self.data_dir = data_dir
        self.admin_token = secrets.token_urlsafe(32)
        self.issuer_keys = KeyStore.init(data_dir / "issuer-keys", alg="ES256", issuer=issuer)
        self.bus = MemoryBus()
        self.model = load_model(model_dir)
        self.validator = ValidatorService(
            ValidatorConfig(issuer=issuer, audience=audience, jwks_file=data_dir / "issuer-keys" / "jwks.json"),
            data_dir=data_dir,
            bus=self.bus,
            trusted_proxies=GATEWAY,
            admin_token=self.admin_token,
            clock=clock,
        )
        feed_keys = open_or_create_keys(data_dir / "revocation-keys")
        signer, verifier = FeedSigner(feed_keys), FeedVerifier.from_store(feed_keys)
        self.validator.signer = signer
        self.responder = Responder(AutoRevoker(policy), self.bus, issuer=issuer, signer=signer, clock=clock)
        self.follower = RevocationFollower(self.bus, self.validator.revocations, verifier=verifier)
        self.validator.feed = self.follower
        self.alerts_seen: dict[str, Alert] = {}
        self._alerts_lock = threading.Lock()
        self.runner = StreamingRunner(
            self.bus,
            self.model,
            baselines_path=data_dir / "baselines.json",
            respond=self.responder,
            on_alert=self._on_alert,
            poll_timeout_s=0.05,
        )
        self.writer = ArchiveWriter(data_dir)
        self.runner.engine.on_scored = ScoreRecorder(self.writer, self.model)
        self.archive = ArchiveConsumer(self.bus, self.writer, flush_interval_s=5.0)
        self.alerts = AlertsService(data_dir, admin_token=self.admin_token)
        self.alerts_consumer = AlertsConsumer(self.bus, self.alerts, parse_revocation=verifier.verify)
        self.worker = AlertsWorker(self.alerts, interval_s=0.2)
        self.validator_app = create_validator_app(self.validator)
        self.alerts_app = create_alerts_app(self.alerts)
        self._loops = [
            BackgroundLoop("revocation-feed", self.follower.step),
            BackgroundLoop("archive", self.archive.step),
            BackgroundLoop("pipeline", self.runner.step),
            BackgroundLoop("alerts-consumer", self._consume_alerts),
        ]

    def _on_alert(self, alert: Alert) -> None:
        with self._alerts_lock:
            self.alerts_seen[alert.alert_id] = alert  # an escalation replaces the earlier state

    def alerts_so_far(self) -> list[Alert]:
        with self._alerts_lock:
            return list(self.alerts_seen.values())

    def _consume_alerts(self) -> None:
        if self.alerts_consumer.step():
            self.worker.wake()  # deliver at once, not at the worker's next tick

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
        """Wait until the pipeline has scored everything and the outbox has nothing left to deliver."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.lag() == 0 and self.follower.caught_up and self.alerts.pending_count() == 0:
                time.sleep(0.5)  # one more quiet round: the runner flushes its last tick when the bus is quiet
                if self.lag() == 0 and self.alerts.pending_count() == 0:
                    return True
            time.sleep(0.1)
        return False

    def stop(self) -> None:
        for loop in self._loops:
            loop.stop()
        self.worker.stop()
        self.runner.save_baselines()
        self.runner.close()
        self.alerts_consumer.close()
        self.follower.close()
        self.archive.close()  # flushes the last events, features, scores and alerts
        self.alerts.close()
        self.validator.close()
        self.bus.close()
