"""Topic names and their settings (design.md, "Records")."""

from __future__ import annotations

from dataclasses import dataclass

TOKEN_USAGE = "jwtwatch.token-usage"
ALERTS = "jwtwatch.alerts"
REVOCATIONS = "jwtwatch.revocations"
DEAD_LETTER = "jwtwatch.dead-letter"
VERDICTS = "jwtwatch.verdicts"  # analysts' verdict/1 on alerts, from the alerts service to the pipeline
REPLAY = "jwtwatch.replay"  # one-time tokens used, shared between validator instances (pipeline.validation.one_time)


def keyed_views(usage_topic: str) -> tuple[str, str]:
    """The keyed views of a usage topic: ``(<topic>.by-subject, <topic>.by-ip)``, the same events keyed by subject
    and by client IP (pipeline.views). The token view is the usage topic itself (keyed by ``jti``, else IP)."""
    return f"{usage_topic}.by-subject", f"{usage_topic}.by-ip"


TOKEN_USAGE_BY_SUBJECT, TOKEN_USAGE_BY_IP = keyed_views(TOKEN_USAGE)


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
        # Its keyed views (pipeline.views.rekey): as many partitions, so that a worker can own the same share.
        TopicSpec(TOKEN_USAGE_BY_SUBJECT, partitions),
        TopicSpec(TOKEN_USAGE_BY_IP, partitions),
        TopicSpec(ALERTS, partitions),
        TopicSpec(REVOCATIONS, 1, compacted=True),
        TopicSpec(DEAD_LETTER, 1),
        TopicSpec(REPLAY, 1),
        # Verdicts: few (people make them), read whole by every pipeline process at start to rebuild its
        # suppressions; compacted by alert_id, so the last verdict on an alert is the one that stays.
        TopicSpec(VERDICTS, 1, compacted=True),
    ]
