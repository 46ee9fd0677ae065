"""``jwtwatch pipeline run``: the detection pipeline as its own process, over Kafka; ``jwtwatch pipeline rekey``: the
re-keying stage that makes the usage topic's keyed views."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli._options import (
    DEFAULT_MODEL_DIR,
    DEFAULT_PIPELINE_GROUP,
    AllowCidrs,
    AllowClients,
    AllowSubjects,
    AutoRevoke,
    DataDir,
    DryRun,
    IpDb,
    KafkaConsumerClient,
    MaxRevocationsPerMinute,
    ModelDir,
    PipelineGroup,
    RequiredKafka,
    RevocationKeys,
    RevokeMinSeverity,
    env,
)
from pipeline.cli._output import console, failing_on, log_to_stderr
from pipeline.cli._startup import open_networks


def pipeline_run(
    kafka: RequiredKafka,
    issuer: Annotated[str, typer.Option(envvar=env("issuer"), help="Issuer (iss) of the revocations it makes.")],
    model_dir: ModelDir = DEFAULT_MODEL_DIR,
    data_dir: DataDir = Path("data"),
    auto_revoke: AutoRevoke = False,
    revoke_min_severity: RevokeMinSeverity = "high",
    dry_run: DryRun = False,
    allow_subjects: AllowSubjects = None,
    allow_clients: AllowClients = None,
    allow_cidrs: AllowCidrs = None,
    max_revocations_per_minute: MaxRevocationsPerMinute = 10,
    group: PipelineGroup = DEFAULT_PIPELINE_GROUP,
    revocation_keys: RevocationKeys = None,
    kafka_consumer: KafkaConsumerClient = "kafka-python",
    ip_db: IpDb = None,
) -> None:
    """Consume token-usage/1, score it, publish alert/1 (and revocations); archive events and alerts."""
    from pipeline.bus.kafka import check_consumer_client
    from pipeline.errors import ModelError, NodeError
    from pipeline.networks import identity_warning
    from pipeline.nodes import PipelineNode, PipelineSettings, open_bus, open_feed_keys
    from pipeline.response.policy import ResponsePolicy
    from pipeline.scoring.model import load_model

    with failing_on(ValueError, prefix="--kafka-consumer: "):
        check_consumer_client(kafka_consumer)  # before the model loads: a wrong name or a missing library
    log_to_stderr()
    with failing_on(ModelError, ValueError):
        model = load_model(model_dir)
        policy = ResponsePolicy.from_options(
            enabled=auto_revoke, min_severity=revoke_min_severity, dry_run=dry_run, allow_subjects=allow_subjects,
            allow_clients=allow_clients, allow_cidrs=allow_cidrs, max_per_minute=max_revocations_per_minute,
        )  # fmt: skip
    networks = open_networks(ip_db, say="log")
    if warning := identity_warning(model.metadata.get("training", {}).get("network_identity"), networks.source):
        logging.getLogger("pipeline.networks").warning(warning)
    with failing_on(NodeError):
        signer = open_feed_keys(revocation_keys, kafka, data_dir).signer
        bus = open_bus(kafka, kafka_consumer)
    settings = PipelineSettings(issuer=issuer, data_dir=data_dir, policy=policy, networks=networks, group=group)
    node = PipelineNode(bus, model, settings, signer=signer)
    console.print(f"pipeline on {kafka}: model {model.version}, group {group}, data in {data_dir}")
    try:
        node.run_until_signalled()
    finally:
        bus.close()


def pipeline_rekey(
    kafka: RequiredKafka,
    group: PipelineGroup = DEFAULT_PIPELINE_GROUP,
    kafka_consumer: KafkaConsumerClient = "kafka-python",
) -> None:
    """Re-key token-usage/1 into its views by subject and by IP (bytes unchanged), in group GROUP-rekey."""
    from pipeline.bus.kafka import check_consumer_client
    from pipeline.bus.topics import TOKEN_USAGE, keyed_views
    from pipeline.errors import NodeError
    from pipeline.nodes import RekeyNode, open_bus

    with failing_on(ValueError, prefix="--kafka-consumer: "):
        check_consumer_client(kafka_consumer)
    log_to_stderr()
    with failing_on(NodeError):
        bus = open_bus(kafka, kafka_consumer)
    try:
        node = RekeyNode(bus, group=group)
        by_subject, by_ip = keyed_views(TOKEN_USAGE)
        console.print(
            f"rekey on {kafka}: {TOKEN_USAGE} (group {node.group}) -> {by_subject} (key: subject) and {by_ip} "
            f"(key: client IP); until SIGINT or SIGTERM"
        )
        node.run_until_signalled()
    finally:
        bus.close()
