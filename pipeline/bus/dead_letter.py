"""The dead-letter topic: anything a consumer cannot use, with the error and the original bytes — and the rule that
decides what a consumer may park there.

**The rule** (every consumer follows it: the alerts consumer, the archive, the revocation and replay followers, the
streaming runner). A record is handled on its own; when handling it raises, the exception decides:

* an *infrastructure fault* (:func:`is_infrastructure_fault`) — the disk or database failed (``OSError``: disk full,
  I/O error; ``sqlite3`` errors of the database itself: locked, busy, full, corrupt, closed), memory ran out, or a
  component said it is :class:`Unavailable` — is not the record's doing: the record is good data, and parking it
  would lose it. The consumer does not commit, rewinds to the first message it has not finished
  (:func:`rewind`) and raises; it tries again later.
* anything else raised while parsing or applying *that one record* (``ValueError`` such as ``RecordError`` or bad
  UTF-8, ``TypeError`` such as orjson refusing to serialise it, ``OverflowError``, ``RecursionError``, ``KeyError``,
  sqlite3's data errors ...) is the record's fault: it is dead-lettered with the error, counted, and the consumer
  goes on with the next record. A bug of ours that only some records trigger lands here too — parked with its
  error, not lost, and not a consumer stopped for everyone (which is what a retried poison record does).
"""

from __future__ import annotations

import base64
import hashlib
import sqlite3
from collections.abc import Sequence

import orjson

from pipeline.bus.base import Bus, Consumer, Message
from pipeline.bus.topics import DEAD_LETTER
from pipeline.errors import Unavailable

#: The original is kept whole up to this size. Base64 makes it 4/3 larger, and the dead letter must stay under
#: the broker's default message limit (1 MiB) — or publishing it would fail, the message would never be
#: committed, and the consumer would stop on it at every restart. A larger original keeps its first
#: MAX_ORIGINAL bytes, its size and its SHA-256; it also stays at ``topic/partition/offset`` until retention.
MAX_ORIGINAL = 512 * 1024
MAX_KEY = 16 * 1024
MAX_ERROR = 1000
#: Dead letters logged one by one before only every LOG_EVERY-th is: a flood of bad records (an attacker's, or a
#: producer's bug) must not flood the log too. Every one is still counted and parked with its error.
LOG_FIRST = 10
LOG_EVERY = 1000


def worth_logging(count: int) -> bool:
    """Whether the ``count``-th dead letter of a consumer gets a log line of its own."""
    return count <= LOG_FIRST or count % LOG_EVERY == 0


#: sqlite3 errors about the statement's data (a constraint, a value it cannot bind): the record's fault. Every other
#: ``sqlite3.DatabaseError`` is the database's (locked, busy, disk I/O, full, corrupt, read-only).
_SQLITE_DATA_ERRORS = (sqlite3.IntegrityError, sqlite3.DataError, sqlite3.InterfaceError)


def is_infrastructure_fault(exc: BaseException, *also: type[BaseException]) -> bool:
    """Whether ``exc`` is a fault of the environment (retry the record) rather than of the record (dead-letter it).

    ``also`` adds a component's own "could not store it" errors (which wrap the ones above)."""
    if isinstance(exc, (Unavailable, OSError, MemoryError, *also)):
        return True
    if isinstance(exc, sqlite3.ProgrammingError):
        # "Cannot operate on a closed database" is a store shut under the consumer; the rest are statement bugs.
        return "closed" in str(exc)
    return isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, _SQLITE_DATA_ERRORS)


def describe(exc: BaseException) -> str:
    """The exception as one printable line for a dead letter or a log: a hostile record's text cannot forge lines,
    carry lone surrogates (which would make the dead letter itself unencodable) or grow without bound.

    A ``ValueError`` (a ``RecordError`` names record, field and value) is its message; anything else is
    prefixed with its type ("TypeError: Recursion limit reached" says more than the message alone)."""
    message = str(exc)
    return _printable(message if isinstance(exc, ValueError) and message else f"{type(exc).__name__}: {message}")


def _printable(text: str) -> str:
    text = text[: MAX_ERROR * 2]
    if not text.isprintable():  # control characters, lone surrogates, ...: escaped as Python would show them
        text = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)
    return text[:MAX_ERROR]


def rewind(consumer: Consumer, messages: Sequence[Message]) -> None:
    """Re-position ``consumer`` at the first of ``messages`` in each partition: they come again on the next poll."""
    first: dict[tuple[str, int], int] = {}
    for message in messages:
        tp = (message.topic, message.partition)
        first[tp] = min(first.get(tp, message.offset), message.offset)
    if first:
        consumer.seek(first)


def dead_letter(bus: Bus, message: Message, error: str, *, consumer: str | None = None) -> None:
    """Park an unusable message: nothing is lost, and the consumer goes on."""
    value = message.value
    key = message.key
    record = {
        "error": _printable(error),
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


__all__ = ["MAX_ERROR", "dead_letter", "describe", "is_infrastructure_fault", "rewind", "worth_logging"]
