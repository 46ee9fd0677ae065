"""The detection pipeline as one node: usage events in; alerts, revocations and the archive out.

``jwtwatch pipeline run`` runs it alone over Kafka; :class:`~pipeline.nodes.allinone.AllInOne` runs it beside the
validator and the alerts service on the in-process bus."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.archive import ArchiveConsumer, ArchiveWriter, ScoreRecorder
from pipeline.bus.base import Bus
from pipeline.detection.runner import DEFAULT_GROUP, StreamingRunner
from pipeline.events import Alert
from pipeline.loop import BackgroundLoop
from pipeline.networks import PREFIXES, NetworkResolver
from pipeline.nodes.running import run_until_signalled
from pipeline.response.policy import AutoRevoker, ResponsePolicy
from pipeline.response.responder import Responder
from pipeline.revocations.feed import FeedSigner
from pipeline.scoring.model import DetectionModel


@dataclass(frozen=True, kw_only=True)
class PipelineSettings:
    #: The ``iss`` of the revocations it makes.
    issuer: str
    #: Where the baselines (``baselines.json``) and the Parquet archive go.
    data_dir: Path
    policy: ResponsePolicy = field(default_factory=ResponsePolicy)
    #: Where client addresses' networks come from (``--ip-db``; the /16 prefixes without).
    networks: NetworkResolver = PREFIXES
    #: The consumer group of the usage topic: instances sharing it share its partitions.
    group: str = DEFAULT_GROUP
    #: The archive's consumer group (default: ``<group>-archive``).
    archive_group: str | None = None
    #: How long the runner waits on an empty poll before it steps again.
    poll_timeout_s: float = 0.2
    #: The archive writes its Parquet files at least this often.
    archive_flush_s: float = 10.0


class PipelineNode:
    """Runner, responder and archive on ``bus``, wired once: the responder answers the runner's alerts (revoking
    under ``policy``, signed by ``signer``, dated by ``clock``), analysts' verdicts are followed, and every scored
    window's features and score go to the archive beside the events and alerts.

    The bus stays its opener's to close. ``on_alert`` sees each alert as it is published (an escalation again)."""

    def __init__(
        self,
        bus: Bus,
        model: DetectionModel,
        settings: PipelineSettings,
        *,
        signer: FeedSigner,
        clock: Callable[[], float] = time.time,
        on_alert: Callable[[Alert], None] | None = None,
    ) -> None:
        self.settings = settings
        self.model = model
        self.responder = Responder(
            AutoRevoker(settings.policy), bus, issuer=settings.issuer, signer=signer, clock=clock
        )
        self.runner = StreamingRunner(
            bus,
            model,
            group=settings.group,
            baselines_path=settings.data_dir / "baselines.json",
            respond=self.responder,
            on_alert=on_alert,
            poll_timeout_s=settings.poll_timeout_s,
            networks=settings.networks,
        )
        # Analysts' verdicts from the alerts service: their consumers are polled by threads of the follower's own
        # (never by the runner's: see pipeline.response.verdicts), stopped and closed by runner.close().
        self.runner.follow_verdicts(self.responder.revoke_for_verdict)
        archive_group = settings.archive_group or f"{settings.group}-archive"
        self.archive = ArchiveConsumer(
            bus, ArchiveWriter(settings.data_dir), group=archive_group, flush_interval_s=settings.archive_flush_s
        )
        # Window features and scores go to the archive beside events and alerts (the writer is thread-safe).
        self.runner.engine.on_scored = ScoreRecorder(self.archive.writer, model)
        self.loops = [BackgroundLoop("pipeline", self.runner.step), BackgroundLoop("archive", self.archive.step)]

    def close(self) -> None:
        """After the loops have stopped: save the baselines, stop following verdicts, flush the archive."""
        self.runner.save_baselines()
        self.runner.close()
        self.archive.close()

    def run_until_signalled(self) -> None:
        """Run the loops until SIGINT or SIGTERM, then close."""
        run_until_signalled(self.loops, self.close)
