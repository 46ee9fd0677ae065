"""The pipeline's side of analyst verdicts: verdict/1 from ``jwtwatch.verdicts`` into suppressions and revocations.

Two readers of the topic, for two jobs:

* **suppressions** — every pipeline process needs *every* benign verdict (its entities may be any), and needs them
  again after a restart: a reader in a group of its own reads the whole (compacted) topic from the beginning and
  never commits. Expired ones are dropped as they come.
* **revocations** — a ``compromised`` verdict must revoke once, not once per process or per restart: a reader in
  the pipeline's shared group (``<group>-verdicts``) hands each to the responder and commits. A record that does
  not parse is dead-lettered here, once.

:meth:`VerdictFollower.step` is called by the streaming runner at the start of each of its steps, in its thread, so
that the engine's :class:`~pipeline.response.suppressions.Suppressions` has one owner and a verdict takes effect
before the next events are scored.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable

from pipeline.bus import VERDICTS, Bus
from pipeline.bus.dead_letter import dead_letter, describe, is_infrastructure_fault, rewind
from pipeline.events import AlertVerdict, parse_ts
from pipeline.response.suppressions import Suppressions

log = logging.getLogger(__name__)

MAX_RECORDS = 500


class VerdictFollower:
    def __init__(
        self,
        bus: Bus,
        suppressions: Suppressions,
        *,
        group: str,
        revoke: Callable[[AlertVerdict], object] | None = None,
    ) -> None:
        """``revoke`` (a :class:`~pipeline.response.responder.Responder`'s ``revoke_for_verdict``) acts on
        ``compromised`` verdicts; without it they only lift an earlier benign verdict's suppression."""
        self.bus = bus
        self.suppressions = suppressions
        self.group = group
        self.revoke = revoke
        # A group of its own: the whole topic, every start (see the module docstring).
        self.reader = bus.consumer([VERDICTS], f"{group}-verdicts-{uuid.uuid4()}", from_beginning=True)
        self.actor = bus.consumer([VERDICTS], f"{group}-verdicts", from_beginning=True) if revoke else None
        self.applied = 0
        self.revocations = 0
        self.dead_letters = 0

    def catch_up(self, timeout_s: float = 15.0) -> int:
        """Read every verdict already on the topic (at start, before the first events are scored)."""
        deadline = time.monotonic() + timeout_s
        applied = self._read(1.0)
        while time.monotonic() < deadline:
            positions, ends = self.reader.positions(), self.reader.end_offsets()
            if ends and all(positions.get(tp, 0) >= end for tp, end in ends.items()):
                break
            applied += self._read(0.2)
        return applied

    def step(self, timeout_s: float = 0.0) -> int:
        """Apply new verdicts; returns how many messages were read (by either reader)."""
        count = self._read(timeout_s)
        if self.actor is not None:
            count += self._act()
        return count

    def _read(self, timeout_s: float) -> int:
        messages = self.reader.poll(MAX_RECORDS, timeout_s)
        for message in messages:
            if not message.value:
                continue  # a tombstone: nothing to apply
            try:
                verdict = AlertVerdict.from_json(message.value)
            except Exception as exc:
                if is_infrastructure_fault(exc):
                    raise
                # The acting reader dead-letters it (once); this one re-reads the topic at every start.
                log.warning("verdict at %s[%d]@%d ignored: %s", message.topic, message.partition, message.offset,
                            describe(exc))  # fmt: skip
                continue
            until = parse_ts(verdict.suppress_until).timestamp() if verdict.suppress_until else None
            self.suppressions.judge(
                alert_id=verdict.alert_id,
                verdict=verdict.verdict,
                entity_type=verdict.entity_type,
                entity=verdict.entity,
                rules=verdict.rules,
                severity=verdict.severity,
                until=until,
            )
            self.applied += 1
        return len(messages)

    def _act(self) -> int:
        assert self.actor is not None and self.revoke is not None
        messages = self.actor.poll(MAX_RECORDS, 0.0)
        if not messages:
            return 0
        try:
            for message in messages:
                if not message.value:
                    continue
                try:
                    verdict = AlertVerdict.from_json(message.value)
                    if verdict.verdict == "compromised":
                        self.revoke(verdict)
                        self.revocations += 1
                except Exception as exc:
                    if is_infrastructure_fault(exc):
                        raise
                    # Its own fault (it does not parse, its values cannot be revoked): parked, the rest go on.
                    dead_letter(self.bus, message, describe(exc), consumer=f"{self.group}-verdicts")
                    self.dead_letters += 1
            self.bus.flush()  # revocations and dead letters are stored before the offsets are committed
        except Exception:
            rewind(self.actor, messages)
            raise
        self.actor.commit()
        return len(messages)

    def close(self) -> None:
        self.reader.close()
        if self.actor is not None:
            self.actor.close()


__all__ = ["VerdictFollower"]
