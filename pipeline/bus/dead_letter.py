"""The dead-letter topic: anything a consumer cannot parse, with the error and the original bytes."""

from __future__ import annotations

import base64
import hashlib

import orjson

from pipeline.bus.base import Bus, Message
from pipeline.bus.topics import DEAD_LETTER

#: The original is kept whole up to this size. Base64 makes it 4/3 larger, and the dead letter must stay under
#: the broker's default message limit (1 MiB) — or publishing it would fail, the message would never be
#: committed, and the consumer would stop on it at every restart. A larger original keeps its first
#: MAX_ORIGINAL bytes, its size and its SHA-256; it also stays at ``topic/partition/offset`` until retention.
MAX_ORIGINAL = 512 * 1024
MAX_KEY = 16 * 1024


def dead_letter(bus: Bus, message: Message, error: str, *, consumer: str | None = None) -> None:
    """Park an unusable message: nothing is lost, and the consumer goes on."""
    value = message.value
    key = message.key
    record = {
        "error": error[:1000],
        "topic": message.topic,
        "partition": message.partition,
        "offset": message.offset,
        "key": base64.b64encode(key[:MAX_KEY]).decode() if key is not None else None,
        "original": base64.b64encode(value[:MAX_ORIGINAL]).decode(),
        "consumer": consumer,
    }
    if len(value) > MAX_ORIGINAL:
        record |= {"original_truncated": True, "original_size": len(value),
                   "original_sha256": hashlib.sha256(value).hexdigest()}  # fmt: skip
    if key is not None and len(key) > MAX_KEY:
        record |= {"key_truncated": True, "key_size": len(key)}
    bus.publish(DEAD_LETTER, key[:MAX_KEY] if key is not None else None, orjson.dumps(record))
