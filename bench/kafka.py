"""Over a real Kafka broker: revocation propagation to two validators, and pipeline throughput.

    python -m bench.kafka [--bootstrap HOST:PORT] [--trials 50] [--events 300000] [--out F.json]

Without --bootstrap it starts its own broker with scripts/kafka-local (jars from Maven Central, Java 17).

* Propagation: a signed revocation is published on ``jwtwatch.revocations``; two validators' feed
  followers (each its own consumer group, as in production) poll the topic; the figure is the time from
  publish until *both* enforce it (their revocation stores answer "revoked").
* Throughput: events are published once to a topic shaped like ``jwtwatch.token-usage`` (the publish rate is
  reported; the drain is timed apart), then one ``StreamingRunner`` drains it — poll, parse, detect, publish
  alerts, commit — reading with kafka-python, and again, in a consumer group of its own, with confluent-kafka.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from bench import broker
from bench.machine import run_line, write_report
from pipeline.bus import REVOCATIONS, TOKEN_USAGE, default_topics
from pipeline.bus.kafka import KafkaBus
from pipeline.detection.runner import StreamingRunner
from pipeline.keys import KeyStore
from pipeline.revocations.feed import FeedSigner, FeedVerifier
from pipeline.revocations.follower import RevocationFollower
from pipeline.revocations.store import RevocationStore, new_revocation
from pipeline.scoring.model import load_model
from pipeline.simulate import SimulationParams, iter_records, simulate

ROOT = Path(__file__).resolve().parent.parent


def propagation(bootstrap: str, trials: int, tmp: Path) -> list[float]:
    keys = KeyStore.init(tmp / "feed-keys", alg="ES256")
    signer = FeedSigner(keys)
    publisher = KafkaBus(bootstrap)
    followers = []
    for i in range(2):
        store = RevocationStore(tmp / f"validator-{i}.sqlite")
        follower = RevocationFollower(KafkaBus(bootstrap), store, verifier=FeedVerifier.from_store(keys))
        followers.append(follower)
    stop = threading.Event()

    def follow(f: RevocationFollower) -> None:
        while not stop.is_set():
            f.step()

    threads = [threading.Thread(target=follow, args=(f,), daemon=True) for f in followers]
    for t in threads:
        t.start()
    # Let both followers join and catch up before measuring.
    deadline = time.monotonic() + 60
    while not all(f.caught_up for f in followers) and time.monotonic() < deadline:
        time.sleep(0.1)
    seconds = []
    for trial in range(trials):
        record = new_revocation(kind="jti", iss="https://bench", value=f"tok-{uuid.uuid4()}", reason="bench")
        started = time.perf_counter()
        publisher.publish(REVOCATIONS, record.bus_key, signer.sign(record))
        publisher.flush()
        while not all(f.store.is_revoked("https://bench", record.value, None, None) for f in followers):
            if time.perf_counter() - started > 30:
                raise SystemExit(f"trial {trial}: not propagated within 30 s")
            time.sleep(0.002)
        seconds.append(time.perf_counter() - started)
        time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join(timeout=10)
    for f in followers:
        f.close()
        f.bus.close()
    publisher.close()
    return seconds


def publish(bootstrap: str, events: int) -> tuple[str, int, float]:
    """Simulated usage events published to a topic of their own: (topic, events, events published per second)."""
    minutes = max(2.0, events / 12_000)
    sim = simulate(SimulationParams(minutes=minutes, seed=5))
    records = list(iter_records(sim))[:events]
    # A topic of its own (shaped like the usage topic): a broker given with --bootstrap may hold earlier runs'.
    topic = f"{TOKEN_USAGE}.bench-{uuid.uuid4().hex[:8]}"
    usage = next(spec for spec in default_topics() if spec.name == TOKEN_USAGE)
    bus = KafkaBus(bootstrap, topics=[*default_topics(), dataclasses.replace(usage, name=topic)])
    try:
        started = time.perf_counter()
        for record in records:
            bus.publish(topic, record.bus_key, record.to_json())
        bus.flush()
        return topic, len(records), len(records) / (time.perf_counter() - started)
    finally:
        bus.close()


def drain(bootstrap: str, topic: str, events: int, consumer_client: str) -> dict[str, float]:
    """One StreamingRunner, in a consumer group of its own, reading ``topic`` to the end with ``consumer_client``."""
    bus = KafkaBus(bootstrap, consumer_client=consumer_client)
    runner = StreamingRunner(bus, load_model(ROOT / "models" / "default"), group=f"bench-{uuid.uuid4()}", topic=topic)
    started, cpu_started = time.perf_counter(), time.process_time()
    idle = 0
    while runner.engine.stats.events + runner.engine.stats.late_events < events and idle < 50:
        idle = idle + 1 if runner.step() == 0 else 0
    drain_s = time.perf_counter() - started
    # CPU time of this process (the runner and the Kafka client's threads), apart from the broker's: on a shared
    # machine the wall-clock figure moves with the load, the CPU figure much less.
    drain_cpu_s = time.process_time() - cpu_started
    processed = runner.engine.stats.events
    runner.close()
    bus.close()
    return {
        "events": events,
        "processed": processed,
        "late": runner.engine.stats.late_events,
        "pipeline_events_per_s": processed / drain_s,
        "pipeline_s": drain_s,
        "pipeline_cpu_s": drain_cpu_s,
        "pipeline_events_per_cpu_s": processed / drain_cpu_s if drain_cpu_s else 0.0,
        "max_batch": runner.max_batch,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap")
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    console = Console()
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        # Without --bootstrap: a private broker (scripts/kafka-local), stopped whatever happens.
        bootstrap = args.bootstrap or stack.enter_context(broker.private_broker(Path(tmp) / "broker")).bootstrap
        seconds = propagation(bootstrap, args.trials, Path(tmp))
        topic, events, published = publish(bootstrap, args.events)
        rates = {**drain(bootstrap, topic, events, "kafka-python"), "publish_events_per_s": published}
        # The same topic drained again with confluent-kafka reading it (pipeline run --kafka-consumer).
        confluent = drain(bootstrap, topic, events, "confluent-kafka")
    values = np.asarray(seconds)
    figures: dict[str, Any] = {
        "propagation_p50_s": float(np.percentile(values, 50)),
        "propagation_p99_s": float(np.percentile(values, 99)),
        "propagation_max_s": float(values.max()),
        **rates,
        "confluent_kafka": confluent,
    }
    table = Table("figure", "value", "target", title=f"over Kafka ({bootstrap})")
    table.add_row("revocation propagation to 2 validators, p50", f"{figures['propagation_p50_s'] * 1000:.0f} ms", "")
    table.add_row(
        "revocation propagation to 2 validators, p99", f"{figures['propagation_p99_s'] * 1000:.0f} ms", "≤ 1 s"
    )
    table.add_row("publish (producer, acks=all)", f"{rates['publish_events_per_s']:,.0f} ev/s", "")
    for label, drained in (("pipeline, one consumer process", rates),
                           ("pipeline, one consumer process, confluent-kafka", confluent)):  # fmt: skip
        table.add_row(label, f"{drained['pipeline_events_per_s']:,.0f} ev/s", "≥ 50,000 ev/s")
        table.add_row(
            "  per second of the consumer's CPU time",
            f"{drained['pipeline_events_per_cpu_s']:,.0f} ev/s",
            f"{drained['pipeline_s']:.1f} s wall, {drained['pipeline_cpu_s']:.1f} s CPU",
        )
        table.add_row("events processed / late", f"{drained['processed']:,} / {drained['late']:,}", "")
    console.print(table)
    console.print(run_line())
    write_report(figures, args.out, to_stdout=False)


if __name__ == "__main__":
    main()
