"""Over a real Kafka broker: the re-keying stage's throughput (issue 17, the keyed views).

    python -m bench.rekey [--bootstrap HOST:PORT] [--events 100000] [--out F.json]

Without --bootstrap it starts its own broker with scripts/kafka-local (jars from Maven Central, Java 17).

Simulated usage events are published once to a topic of their own, shaped like ``jwtwatch.token-usage`` (3
partitions, with its two views). Then, each in a consumer group of its own and for each consumer library
(kafka-python, and confluent-kafka when installed), the topic is drained twice:

* **read only** — the stage's consumer loop with a sink that publishes nothing: poll, parse token-usage/1 strictly,
  commit. What one more consumer of the usage topic costs.
* **re-key** — the stage itself (``pipeline.views.rekey.RekeyStage``): the same, plus each event published to the
  subject view (when it has a subject) and to the IP view, the producer flushed (``acks=all``) before each commit.

The figures are events per second (wall clock, the broker sharing the machine) and per second of this process's
CPU time; the difference between the two drains is what the two produces per event cost.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench import broker
from bench.machine import run_line, write_report
from pipeline.bus import DEAD_LETTER, TOKEN_USAGE, Message, TopicSpec, keyed_views
from pipeline.bus.checkpoint import CheckpointLoop
from pipeline.bus.kafka import KafkaBus
from pipeline.events import TokenUsage
from pipeline.simulate import SimulationParams, iter_records, simulate
from pipeline.views import RekeyStage, decode_usage, subject_key


class _Discard:
    """A sink that takes records and does nothing with them: the read-only drain."""

    def add(self, record: TokenUsage, message: Message) -> None:
        pass

    def flush(self) -> None:
        pass


def publish(bootstrap: str, events: int) -> tuple[str, int, int, float]:
    """Simulated usage events on a topic of their own: (topic, events, events with a subject key, publish ev/s)."""
    minutes = max(2.0, events / 12_000)
    records = list(iter_records(simulate(SimulationParams(minutes=minutes, seed=5))))[:events]
    topic = f"{TOKEN_USAGE}.bench-{uuid.uuid4().hex[:8]}"
    specs = [TopicSpec(name, 3) for name in (topic, *keyed_views(topic))]
    bus = KafkaBus(bootstrap, topics=[*specs, TopicSpec(DEAD_LETTER, 1)])
    try:
        started = time.perf_counter()
        for record in records:
            bus.publish(topic, record.bus_key, record.to_json())
        bus.flush()
        rate = len(records) / (time.perf_counter() - started)
    finally:
        bus.close()
    with_subject = sum(subject_key(r.sub, r.reason) is not None for r in records)
    return topic, len(records), with_subject, rate


def drain(bootstrap: str, topic: str, events: int, consumer_client: str, rekey: bool) -> dict[str, Any]:
    """Read ``topic`` to its end in a group of its own, re-keying it (``rekey``) or only reading it."""
    bus = KafkaBus(bootstrap, topics=[], consumer_client=consumer_client)
    group = f"bench-rekey-{uuid.uuid4().hex[:8]}"
    stage: RekeyStage | None = None
    loop: CheckpointLoop[TokenUsage]
    if rekey:
        stage = RekeyStage(bus, group=group, source=topic, poll_timeout_s=0.5)
        loop = stage.loop
    else:
        consumer = bus.consumer([topic], group, from_beginning=True)
        loop = CheckpointLoop(bus, consumer, decode=decode_usage, sink=_Discard(), name=group, max_records=5000,
                              poll_timeout_s=0.5)  # fmt: skip
    try:
        started, cpu_started = time.perf_counter(), time.process_time()
        idle = 0
        while loop.handled + loop.dead_letters < events and idle < 20:
            idle = idle + 1 if loop.step() == 0 else 0
        seconds, cpu_s = time.perf_counter() - started, time.process_time() - cpu_started
        figures: dict[str, Any] = {
            "events": loop.handled,
            "dead_letters": loop.dead_letters,
            "events_per_s": loop.handled / seconds,
            "seconds": seconds,
            "cpu_s": cpu_s,
            "events_per_cpu_s": loop.handled / cpu_s if cpu_s else 0.0,
            "cpu_us_per_event": cpu_s / loop.handled * 1e6 if loop.handled else 0.0,
        }
        if stage is not None:
            counts = stage.counts()
            figures["published"] = {"by_subject": counts["by_subject"], "by_ip": counts["by_ip"]}
        loop.close()  # the stage's loop too: a last checkpoint, then leave the group
    finally:
        bus.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    console = Console()
    clients = ["kafka-python"] + (["confluent-kafka"] if importlib.util.find_spec("confluent_kafka") else [])
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        bootstrap = args.bootstrap or stack.enter_context(broker.private_broker(Path(tmp) / "broker")).bootstrap
        topic, events, with_subject, published = publish(bootstrap, args.events)
        figures.update(events=events, events_with_subject=with_subject, publish_events_per_s=published)
        for client in clients:
            figures[client] = {
                "read_only": drain(bootstrap, topic, events, client, rekey=False),
                "rekey": drain(bootstrap, topic, events, client, rekey=True),
            }
    table = Table("consumer library", "drain", "events/s", "per CPU s", "CPU µs/event", title=f"rekey ({bootstrap})")
    for client in clients:
        for mode in ("read_only", "rekey"):
            f = figures[client][mode]
            table.add_row(client, mode.replace("_", " "), f"{f['events_per_s']:,.0f}", f"{f['events_per_cpu_s']:,.0f}",
                          f"{f['cpu_us_per_event']:.1f}")  # fmt: skip
        cost = figures[client]["rekey"]["cpu_us_per_event"] - figures[client]["read_only"]["cpu_us_per_event"]
        figures[client]["publish_cpu_us_per_event"] = cost
    console.print(table)
    console.print(
        f"{events:,} events, {with_subject:,} with a subject ({with_subject / events:.0%}): "
        f"{(events + with_subject) / events:.2f} view messages per event; published to the source at "
        f"{published:,.0f} ev/s"
    )
    console.print(run_line())
    write_report(figures, args.out, to_stdout=False)


if __name__ == "__main__":
    main()
