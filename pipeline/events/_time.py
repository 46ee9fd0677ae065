"""Time on the wire: one timestamp form (RFC 3339, UTC, milliseconds, ``Z``), parsed strictly, and event times
in epoch milliseconds — with a shortcut for the canonical form, which the streaming runner meets once per event.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from functools import lru_cache

from pipeline.events._vocabulary import MAX_STRING


def format_ts(moment: datetime | float) -> str:
    """RFC 3339, UTC, millisecond precision, ``Z`` suffix — the one timestamp form on the wire."""
    if isinstance(moment, int | float):
        moment = datetime.fromtimestamp(moment, tz=UTC)
    elif moment.tzinfo is None:
        raise ValueError("naive datetime: jwtwatch timestamps are always UTC")
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_ts(text: str) -> datetime:
    """Parse an RFC 3339 timestamp that carries an explicit offset; returns an aware UTC datetime."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError("timestamp has no UTC offset")
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise ValueError("timestamp out of range in UTC") from None


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def ts_to_epoch_ms(text: str) -> int:
    # Integer arithmetic: float seconds lose the millisecond for dates far from 1970.
    return (parse_ts(text) - _EPOCH) // timedelta(milliseconds=1)


#: ``YYYY-MM-DDTHH:MM:SS`` in ASCII digits — the whole-second part of the canonical wire form.
_SECOND = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", re.ASCII)


#: Event times outside this range are refused: nothing real happens then, and one event from the year
#: 9999 would push the watermark so far that every later event counted as late.
EARLIEST_TS = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_TS = datetime(2100, 1, 1, tzinfo=UTC)


def event_time_ms(value: object) -> int | None:
    """Epoch milliseconds of a token-usage ``ts``, or None exactly where the records' check of a ``ts`` refuses it.

    The streaming runner calls this once per event, so the canonical form ``format_ts`` writes
    (``2026-11-28T12:34:56.789Z``) takes a shortcut: its whole-second part is parsed and range-checked
    once per second of event time (memoised), and the milliseconds are added. Every other form goes
    through the very checks of ``_ts``.
    """
    if type(value) is not str:  # orjson gives exact types; _ts refuses anything but a str
        return None
    if len(value) == 24 and value[19] == "." and value[23] == "Z" and value.isascii() and value[20:23].isdigit():
        second_ms = second_start_ms(value[:19])
        if second_ms is not None:
            return second_ms + int(value[20:23])
    return _general_time_ms(value)


@lru_cache(maxsize=1 << 14)
def second_start_ms(prefix: str) -> int | None:
    """``prefix + ".000Z"`` in epoch ms if ``prefix`` is ``YYYY-MM-DDTHH:MM:SS``, a valid time in range, else None.

    Range bounds are whole seconds, so adding .000 to .999 to a second inside the range stays inside it.
    """
    if not _SECOND.fullmatch(prefix):
        return None
    return _general_time_ms(prefix + ".000Z")


def _general_time_ms(text: str) -> int | None:
    if len(text) > MAX_STRING:
        return None
    try:
        moment = parse_ts(text)
    except ValueError:
        return None
    if not EARLIEST_TS <= moment < LATEST_TS:
        return None
    return (moment - _EPOCH) // timedelta(milliseconds=1)


__all__ = [
    "EARLIEST_TS",
    "LATEST_TS",
    "event_time_ms",
    "format_ts",
    "parse_ts",
    "second_start_ms",
    "ts_to_epoch_ms",
]
