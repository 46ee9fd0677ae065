"""Kafka topic administration: the topics a bus needs, created from their specs if missing.

A topic that already exists is left as it is: one that should be compacted but is not is logged as a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType
from kafka.errors import KafkaError, TopicAlreadyExistsError, for_code

from pipeline.bus.kafka_calls import connect, translated
from pipeline.bus.topics import TopicSpec
from pipeline.errors import KafkaBusError

log = logging.getLogger(__name__)


def create_topics(
    specs: Iterable[TopicSpec],
    *,
    bootstrap: str,
    client_id: str,
    client_config: dict[str, Any],
    replication_factor: int,
    timeout_s: float,
    timeout_ms: int,
) -> None:
    """Create the topics that do not exist yet and wait until every one has a leader."""
    specs = list(specs)
    if not specs:
        return
    admin = connect(
        bootstrap,
        timeout_s,
        "admin client",
        lambda: KafkaAdminClient(client_id=f"{client_id}-admin", **client_config),
    )
    try:
        request = {}
        for spec in specs:
            configs = {"cleanup.policy": "compact"} if spec.compacted else {}
            if replication_factor >= 3:
                configs["min.insync.replicas"] = str(replication_factor - 1)
            request[spec.name] = {
                "num_partitions": max(1, spec.partitions),
                "replication_factor": replication_factor,
                "configs": configs,
            }
        with translated("create topics"):
            result = admin.create_topics(request, timeout_ms=timeout_ms, raise_errors=False)
        existing = []
        for topic in result["topics"]:
            error = for_code(topic["error_code"])
            if topic["error_code"] == 0:
                log.info("created Kafka topic %s", topic["name"])
            elif error is TopicAlreadyExistsError:
                existing.append(topic["name"])
            else:
                raise KafkaBusError(
                    f"cannot create Kafka topic {topic['name']!r}: {error.__name__}: {topic.get('error_message')}"
                )
        with translated("wait for topics"):
            admin.wait_for_topics(list(request), timeout_ms=timeout_ms)
        compacted = [name for name in existing if any(s.name == name and s.compacted for s in specs)]
        if compacted:
            _warn_if_not_compacted(admin, compacted)
    finally:
        admin.close()


def _warn_if_not_compacted(admin: KafkaAdminClient, names: list[str]) -> None:
    """An existing topic keeps its settings; say so if one that should be compacted is not."""
    try:
        described = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name, ["cleanup.policy"]) for name in names],
            config_filter="all",
        )
    except KafkaError as exc:  # informational only
        log.debug("could not describe topic configs: %s", exc)
        return
    for name, configs in described.get("topic", {}).items():
        policy = str(configs.get("cleanup.policy", {}).get("value", ""))
        if "compact" not in policy:
            log.warning("Kafka topic %s exists with cleanup.policy=%s, expected compact", name, policy)


__all__ = ["create_topics"]
