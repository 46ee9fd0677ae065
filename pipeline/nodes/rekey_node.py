"""The re-keying stage as a node: the usage topic re-keyed into its views by subject and by IP.

``jwtwatch pipeline rekey`` runs it alone over Kafka. ``pipeline run`` and ``serve`` do not start it (yet): nothing
reads the views so far (docs/architecture.md, "Keyed views")."""

from __future__ import annotations

from pipeline.bus.base import Bus
from pipeline.bus.topics import TOKEN_USAGE
from pipeline.loop import BackgroundLoop
from pipeline.nodes.running import run_until_signalled
from pipeline.views.rekey import RekeyStage


class RekeyNode:
    """A :class:`~pipeline.views.rekey.RekeyStage` of ``source`` on ``bus``, in consumer group ``<group>-rekey``
    (``group`` is the pipeline's: instances sharing it share the usage topic's partitions). The bus stays its
    opener's to close."""

    def __init__(self, bus: Bus, *, group: str, source: str = TOKEN_USAGE, poll_timeout_s: float = 0.2) -> None:
        self.group = f"{group}-rekey"
        self.stage = RekeyStage(bus, group=self.group, source=source, poll_timeout_s=poll_timeout_s)
        self.loops = [BackgroundLoop("rekey", self.stage.step)]

    def close(self) -> None:
        """After the loop has stopped: a last checkpoint, then leave the group."""
        self.stage.close()

    def run_until_signalled(self) -> None:
        """Run the stage until SIGINT or SIGTERM, then close."""
        run_until_signalled(self.loops, self.close)
