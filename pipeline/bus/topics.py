"""Topic names and their settings (design.md, "Records")."""

from __future__ import annotations

from dataclasses import dataclass

TOKEN_USAGE = "jwtwatch.token-usage"
ALERTS = "jwtwatch.alerts"
REVOCATIONS = "jwtwatch.revocations"
DEAD_LETTER = "jwtwatch.dead-letter"
REPLAY = "jwtwatch.replay"  # one-time tokens used, shared between validator instances (pipeline.validation.replay)


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int = 3
    compacted: bool = False


def default_topics(partitions: int = 3) -> list[TopicSpec]:
    # Revocations are one small compacted partition: every validator reads all of it, in order,
    # so that versions are applied monotonically.
    return [
        TopicSpec(TOKEN_USAGE, partitions),
        TopicSpec(ALERTS, partitions),
        TopicSpec(REVOCATIONS, 1, compacted=True),
        TopicSpec(DEAD_LETTER, 1),
        TopicSpec(REPLAY, 1),
    ]
