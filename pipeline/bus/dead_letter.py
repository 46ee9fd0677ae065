"""The dead-letter topic: anything a consumer cannot parse, with the error and the original bytes."""

from __future__ import annotations

import base64

import orjson

from pipeline.bus.base import Bus, Message
from pipeline.bus.topics import DEAD_LETTER

MAX_ORIGINAL = 1 << 20


def dead_letter(bus: Bus, message: Message, error: str, *, consumer: str | None = None) -> None:
    """Park an unusable message: nothing is lost, and the consumer goes on."""
    record = {
        "error": error[:1000],
        "topic": message.topic,
        "partition": message.partition,
        "offset": message.offset,
        "key": base64.b64encode(message.key).decode() if message.key is not None else None,
        "original": base64.b64encode(message.value[:MAX_ORIGINAL]).decode(),
        "consumer": consumer,
    }
    bus.publish(DEAD_LETTER, message.key, orjson.dumps(record))
