"""``jwtwatch alerts serve``: the alerts service as a process of its own, fed alerts and revocations by the bus."""

from __future__ import annotations

from pathlib import Path

from pipeline.alerts import AlertsConsumer, AlertsService, AlertsWorker, create_alerts_app
from pipeline.bus.base import Bus
from pipeline.loop import BackgroundLoop
from pipeline.nodes.running import Listener
from pipeline.revocations.feed import FeedVerifier
from pipeline.serving.web import metrics_app


class AlertsNode:
    """The service (subscriptions, alert log, outbox in ``data_dir``), the consumer that feeds it from ``bus`` —
    revocations checked by ``verifier`` — and the worker that delivers the webhooks. The bus stays its opener's:
    a service that cannot open leaves it open too."""

    def __init__(
        self,
        bus: Bus,
        *,
        data_dir: Path,
        admin_token: str | None,
        verifier: FeedVerifier,
        worker_interval_s: float = 1.0,
    ) -> None:
        """Raises ValueError or OSError when the service cannot open its database. The worker looks at the outbox
        every ``worker_interval_s`` (for retries that fall due), and at once when the consumer accepts something."""
        # Verdicts are published on the bus, for the pipeline.
        self.service = AlertsService(data_dir, admin_token=admin_token, bus=bus)
        self.consumer = AlertsConsumer(bus, self.service, parse_revocation=verifier.verify)
        self.worker = AlertsWorker(self.service, worker_interval_s)
        self._loop = BackgroundLoop("alerts-consumer", self._consume)

    def _consume(self) -> int:
        read = self.consumer.step()
        if read:
            self.worker.wake()  # deliver new alerts now, not at the worker's next look
        return read

    def start(self) -> None:
        self.worker.start()
        self._loop.start()

    def serve(self, listener: Listener) -> None:
        """Serve the admin API until SIGINT or SIGTERM; stops the node after."""
        try:
            listener.server(create_alerts_app(self.service), lambda: metrics_app(self.service.registry)).run()
        finally:
            self.stop()

    def stop(self) -> None:
        self._loop.stop()
        self.worker.stop()
        self.consumer.close()
        self.service.close()
