"""Topic names and their settings (design.md, "Records")."""

from __future__ import annotations

from dataclasses import dataclass

TOKEN_USAGE = "jwtwatch.token-usage"
ALERTS = "jwtwatch.alerts"
REVOCATIONS = "jwtwatch.revocations"
DEAD_LETTER = "jwtwatch.dead-letter"
VERDICTS = "jwtwatch.verdicts"  # analysts' verdict/1 on alerts, from the alerts service to the pipeline
REPLAY = "jwtwatch.replay"  # one-time tokens used, shared between validator instances (pipeline.validation.one_time)


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
        # Verdicts: few (people make them), read whole by every pipeline process at start to rebuild its
        # suppressions; compacted by alert_id, so the last verdict on an alert is the one that stays.
        TopicSpec(VERDICTS, 1, compacted=True),
    ]
