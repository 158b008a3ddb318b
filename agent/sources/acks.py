"""QoS 1 acknowledgements owed to the local broker, released once a checkpoint covers them.

A reading is acknowledged to the broker only after the outbox transaction that holds its effect
(the module state it changed, or the reading itself still queued) has committed
(docs/design/004-checkpoints.md). Until then the broker keeps it, and after a crash of the agent
delivers it again. Packet ids identify what is owed: a publish the broker sends again (DUP, after
a reconnect) while its acknowledgement is still owed was taken already and is not passed on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger(__name__)

THROTTLE_CUTS = 8
"""A broker that lets exactly the same number of messages wait for us at this many checkpoints
in a row is holding back the rest: its in-flight limit is lower than our commit interval needs."""
THROTTLE_LIMIT = 1000
"""Limits at or above this are not worth a warning."""


class Counters(Protocol):
    def incr(self, name: str, by: int = 1) -> None: ...


class AckSender(Protocol):
    def send_acks(self, packet_ids: list[int]) -> bool: ...


class AckLedger:
    def __init__(self, counters: Counters, scope: str) -> None:
        self._counters = counters
        self._scope = scope
        self._owed: dict[int, bool] = {}  # packet id -> a committed checkpoint covers it
        self._since_cut: list[int] = []
        self._earlier: set[int] = set()
        self.last_cut: list[int] = []
        """The ids the last cut covers: saved with its checkpoint, in case a crash comes
        between the commit and their PUBACKs."""
        self._sender: AckSender | None = None
        self._same_count = 0
        self._last_count = -1
        self.throttled_at: int | None = None
        """The in-flight limit the broker seems to hold us to, once detected."""

    @property
    def owed(self) -> int:
        return len(self._owed)

    def connecting(self) -> None:
        """A new connection starts: what is owed now was taken on an earlier one."""
        self._earlier = set(self._owed)

    def connected(self, sender: AckSender, session_present: bool) -> None:
        """The new connection is subscribed; without its session the broker forgot what we
        owed it on earlier ones (what this one delivered already is owed all the same)."""
        self._sender = sender
        if not session_present:
            earlier, self._earlier = self._earlier, set()
            for pid in earlier:
                self._owed.pop(pid, None)
            self._since_cut = [pid for pid in self._since_cut if pid not in earlier]
            return
        covered = [pid for pid, done in self._owed.items() if done]
        if covered and sender.send_acks(covered):
            for pid in covered:
                del self._owed[pid]

    def taken(self, packet_ids: list[int]) -> None:
        self._owed.update(dict.fromkeys(packet_ids, False))
        self._since_cut += packet_ids

    def redelivered(self, packet_id: int) -> bool:
        done = self._owed.get(packet_id)
        if done is None:
            return True  # not taken before (or acknowledged already): a publish like any other
        self._counters.incr("redelivered_taken")
        if done and self._sender is not None and self._sender.send_acks([packet_id]):
            del self._owed[packet_id]
        return False

    def restore(self, packet_ids: list[int]) -> None:
        """The ids of the last committed checkpoint before a crash: their effect is saved, their
        PUBACK may not have gone out. The broker's resend of them (DUP) is not taken again."""
        self._owed.update(dict.fromkeys(packet_ids, True))

    def cut(self) -> Callable[[], None] | None:
        """Everything received so far is in the checkpoint being taken now: the returned
        function acknowledges it, to be called once that checkpoint has committed (None when
        nothing new is owed)."""
        ids, self._since_cut = self._since_cut, []
        self.last_cut = ids
        self._watch_throttle(len(self._owed))
        if not ids:
            return None

        def release() -> None:
            owed = self._owed
            sendable = [pid for pid in ids if pid in owed]
            for pid in sendable:
                owed[pid] = True
            if sendable and self._sender is not None and self._sender.send_acks(sendable):
                for pid in sendable:
                    owed.pop(pid, None)

        return release

    def _watch_throttle(self, count: int) -> None:
        if count and count == self._last_count:
            self._same_count += 1
        else:
            self._same_count = 0
        self._last_count = count
        if self._same_count == THROTTLE_CUTS and 10 <= count < THROTTLE_LIMIT:
            if self.throttled_at != count:
                log.warning(
                    "%s: the broker holds back messages once %d await our acknowledgement "
                    "(max_inflight_messages?); readings are delayed, not lost. Ship "
                    "configs/mosquitto-local.conf or raise that limit", self._scope, count,
                )
            self.throttled_at = count
            self._counters.incr("throttled_by_broker")
