"""QoS 1 acknowledgements owed to the local broker, released once a checkpoint covers them.

A reading is acknowledged to the broker only after the outbox transaction that holds its effect
(the module state it changed, or the reading itself still queued) has committed
(docs/design/004-checkpoints.md). Until then the broker keeps it, and after a crash of the agent
delivers it again. Packet ids identify what is owed: a publish the broker sends again (DUP, after
a reconnect) while its acknowledgement is still owed was taken already and is not passed on.
"""

from __future__ import annotations

import logging
from collections import deque
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
    """Sets and lists, not a table per packet id: taking a read's ids, cutting and releasing
    are a few whole-list operations (in C), whatever the number of readings; the per-id work is
    left to what is rare (a reconnect, a resend)."""

    def __init__(self, counters: Counters, scope: str) -> None:
        self._counters = counters
        self._scope = scope
        self._owed: set[int] = set()
        """Ids taken whose checkpoint has not committed yet."""
        self._covered: dict[int, None] = {}
        """Ids a committed checkpoint covers whose PUBACK has not gone out (no connection then,
        or restored after a crash), in the order taken."""
        self._since_cut: list[int] = []
        self._earlier: set[int] = set()
        self.last_cut: list[int] = []
        """The ids the last cut covers: saved with its checkpoint, in case a crash comes
        between the commit and their PUBACKs."""
        self._sender: AckSender | None = None
        self._taken = 0  # messages taken so far (modulo 2**32)
        self._sent: deque[tuple[int, list[int]]] = deque()
        """The PUBACKs sent fewer than ``RECENT`` messages ago, as (1 + ``_taken`` then, ids)."""
        self._sent_at: dict[int, int] | None = None
        """Per packet id, the latest stamp in ``_sent``: made at the first resend looked up
        since the last cut, kept up to date until the next cut."""
        self._same_count = 0
        self._last_count = -1
        self.throttled_at: int | None = None
        """The in-flight limit the broker seems to hold us to, once detected."""

    @property
    def owed(self) -> int:
        return len(self._owed) + len(self._covered)

    def connecting(self) -> None:
        """A new connection starts: what is owed now was taken on an earlier one."""
        self._earlier = self._owed.union(self._covered)

    def connected(self, sender: AckSender, session_present: bool) -> None:
        """The new connection is subscribed; without its session the broker forgot what we
        owed it on earlier ones (what this one delivered already is owed all the same)."""
        self._sender = sender
        if not session_present:
            earlier, self._earlier = self._earlier, set()
            self._owed -= earlier
            for pid in earlier:
                self._covered.pop(pid, None)
            self._since_cut = [pid for pid in self._since_cut if pid not in earlier]
            return
        if self._covered and self._send(list(self._covered)):
            self._covered.clear()

    def taken(self, packet_ids: list[int]) -> None:
        self._owed.update(packet_ids)
        if self._covered:  # an id restored after a crash, now a new message
            for pid in packet_ids:
                self._covered.pop(pid, None)
        self._since_cut += packet_ids
        self._taken = (self._taken + len(packet_ids)) & _STAMP

    def redelivered(self, packet_id: int) -> bool:
        if packet_id in self._owed:
            self._counters.incr("redelivered_taken")
            return False
        if packet_id in self._covered:
            self._counters.incr("redelivered_taken")
            if self._send([packet_id]):
                del self._covered[packet_id]
            return False
        if not self._acknowledged_lately(packet_id):
            return True  # not taken before: a publish like any other
        # ours already, and acknowledged: the broker restarted from a save older than that
        self._counters.incr("redelivered_acked")
        self._send([packet_id])
        return False

    def _acknowledged_lately(self, packet_id: int) -> bool:
        sent_at = self._sent_at
        if sent_at is None:
            sent_at = self._sent_at = {}
            for stamp, ids in self._sent:  # oldest first: the latest stamp of an id stays
                sent_at.update(dict.fromkeys(ids, stamp))
        when = sent_at.get(packet_id)
        return when is not None and (self._taken + 1 - when) & _STAMP < RECENT

    def _send(self, packet_ids: list[int]) -> bool:
        """PUBACK these now, if connected; remember when, for the broker's resends."""
        if self._sender is None or not self._sender.send_acks(packet_ids):
            return False
        stamp = (self._taken + 1) & _STAMP
        sent = self._sent
        while sent and (stamp - sent[0][0]) & _STAMP >= RECENT:
            sent.popleft()
        sent.append((stamp, packet_ids))
        if self._sent_at is not None:
            self._sent_at.update(dict.fromkeys(packet_ids, stamp))
        return True

    def restore(self, packet_ids: list[int]) -> None:
        """The ids of the last committed checkpoint before a crash: their effect is saved, their
        PUBACK may not have gone out. The broker's resend of them (DUP) is not taken again."""
        self._owed.difference_update(packet_ids)
        self._covered.update(dict.fromkeys(packet_ids))

    def cut(self) -> Callable[[], None] | None:
        """Everything received so far is in the checkpoint being taken now: the returned
        function acknowledges it, to be called once that checkpoint has committed (None when
        nothing new is owed)."""
        ids, self._since_cut = self._since_cut, []
        self.last_cut = ids
        self._sent_at = None  # made again if a resend comes: not kept up to date for nothing
        self._watch_throttle(self.owed)
        if not ids:
            return None

        def release() -> None:
            owed = self._owed
            # every id is still owed unless a reconnect without the session forgot it, or a
            # resend acknowledged it meanwhile
            sendable = ids if owed.issuperset(ids) else [pid for pid in ids if pid in owed]
            if not sendable:
                return
            owed.difference_update(sendable)
            if not self._send(sendable):
                self._covered.update(dict.fromkeys(sendable))

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
