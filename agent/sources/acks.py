"""QoS 1 acknowledgements owed to the local broker, released once a checkpoint covers them.

A reading is acknowledged to the broker only after the outbox transaction that holds its effect
(the module state it changed, or the reading itself still queued) has committed
(docs/design/004-checkpoints.md). Until then the broker keeps it, and after a crash of the agent
delivers it again. Packet ids identify what is owed: a publish the broker sends again (DUP, after
a reconnect) while its acknowledgement is still owed was taken already and is not passed on.
"""

from __future__ import annotations

import logging
from array import array
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger(__name__)

THROTTLE_CUTS = 8
"""A broker that lets exactly the same number of messages wait for us at this many checkpoints
in a row is holding back the rest: its in-flight limit is lower than our commit interval needs."""
THROTTLE_LIMIT = 1000
"""Limits at or above this are not worth a warning."""
RECENT = 32_768
"""A publish sent again (DUP) whose packet id we acknowledged fewer than this many messages ago
is one we have: the broker lost our PUBACK with its own crash and came back from an older save.
Mosquitto hands out ids in sequence, so an id comes round only after 65,535 more messages:
within half of that it still names the message we acknowledged."""
_STAMP = 0xFFFFFFFF


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
        self._taken = 0  # messages taken so far (modulo 2**32)
        self._acked_at: array[int] | None = None
        """Per packet id: 1 + ``_taken`` when its PUBACK went out (0: never). 256 KiB, made
        with the first PUBACK: every source's runner has a ledger, few ever acknowledge."""
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
        if covered and self._send(covered):
            for pid in covered:
                del self._owed[pid]

    def taken(self, packet_ids: list[int]) -> None:
        self._owed.update(dict.fromkeys(packet_ids, False))
        self._since_cut += packet_ids
        self._taken = (self._taken + len(packet_ids)) & _STAMP

    def redelivered(self, packet_id: int) -> bool:
        done = self._owed.get(packet_id)
        if done is None:
            if not self._acknowledged_lately(packet_id):
                return True  # not taken before: a publish like any other
            # ours already, and acknowledged: the broker restarted from a save older than that
            self._counters.incr("redelivered_acked")
            self._send([packet_id])
            return False
        self._counters.incr("redelivered_taken")
        if done and self._send([packet_id]):
            del self._owed[packet_id]
        return False

    def _acknowledged_lately(self, packet_id: int) -> bool:
        if self._acked_at is None:
            return False
        stamp = self._acked_at[packet_id]
        return bool(stamp) and (self._taken + 1 - stamp) & _STAMP < RECENT

    def _send(self, packet_ids: list[int]) -> bool:
        """PUBACK these now, if connected; remember when, for the broker's resends."""
        if self._sender is None or not self._sender.send_acks(packet_ids):
            return False
        stamp = (self._taken + 1) & _STAMP or 1
        if self._acked_at is None:
            self._acked_at = array("I", bytes(4 * 65536))
        acked_at = self._acked_at
        for pid in packet_ids:
            acked_at[pid] = stamp
        return True

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
            if sendable and self._send(sendable):
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
