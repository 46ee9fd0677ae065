"""``jwtwatch pipeline run``: the detection pipeline as its own process, over Kafka."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli._options import (
    DEFAULT_MODEL_DIR,
    AllowCidrs,
    AllowClients,
    AllowSubjects,
    AutoRevoke,
    DataDir,
    DryRun,
    IpDb,
    MaxRevocationsPerMinute,
    ModelDir,
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
    group: Annotated[str, typer.Option(envvar=env("group"), help="Consumer group (share it to share work).")] = (
        "jwtwatch-pipeline"
    ),
    revocation_keys: RevocationKeys = None,
    kafka_consumer: Annotated[
        str,
        typer.Option(
            envvar=env("kafka_consumer"),
            help="Library that reads the usage topic: kafka-python, or confluent-kafka (librdkafka: records "
            "decoded in C, about 1.5x the events per second; pip install 'jwtwatch[confluent]').",
        ),
    ] = "kafka-python",
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
