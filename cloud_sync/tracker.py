"""What the uploader has sent and what the cloud has accounted for: pure bookkeeping, no I/O.

Two cursors walk the outbox. On every connect the records that are already waiting become the
*backlog* (sent at a limited rate) and everything committed afterwards is *live* (sent first,
unthrottled). A sent message is remembered only as a range of seqs with the time it left; the
records themselves stay in the outbox until the cloud's ack covers them, so a resend reads them
again. The sent ranges are bounded by ``unacked_records``.

Resending is go-back-N: when the oldest range stays unacknowledged past ``resend_after``, both
cursors go back to the ack and everything after it is sent again (the cloud's store takes the
repeats idempotently). The timeout doubles while the ack does not move, up to 16 times.

A message that is lost again and again while the cloud receives what came after it is poison
(over the broker's size limit on an MQTT 3.1.1 broker, which drops it silently): its range is
then sent one record per message, and a single record lost like that twice more is given up
(``set_aside``), so it never blocks the queue behind it. A broker that refuses a message
outright (an MQTT 5 reason code) gets the same treatment at once.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

SPLIT_AFTER = 2
"""A range lost this many times in a row (while later records arrive) is sent record by record."""
GIVE_UP_AFTER = 2
"""A single record lost this many more times (or refused once) is set aside."""
MAX_BACKOFF = 16


@dataclass
class Sent:
    first: int
    last: int
    count: int
    at: float
    live: bool


class SendTracker:
    def __init__(self, unacked_records: int, resend_after: float) -> None:
        self.unacked_limit = unacked_records
        self.resend_after = resend_after
        self.acked = 0
        self.max_seen = 0
        self.live_from = 0
        self.backlog_cursor = 0
        self.live_cursor = 0
        self.split_until = 0
        """Records up to this seq are sent one per message."""
        self.sent: deque[Sent] = deque()
        self.unacked = 0
        self._backoff = 1
        self._strikes: dict[int, int] = {}
        self.resends = 0

    # -- connecting and sending -----------------------------------------------------------------

    def start(self, acked: int, last_seq: int) -> None:
        """A new connection: what is waiting now is backlog, what comes later is live."""
        self.acked = max(self.acked, acked)
        self.live_from = max(last_seq, self.acked)
        self.backlog_cursor = self.acked
        self.live_cursor = self.live_from
        self.sent.clear()
        self.unacked = 0

    @property
    def backlog_done(self) -> bool:
        return self.backlog_cursor >= self.live_from

    @property
    def room(self) -> bool:
        return self.unacked < self.unacked_limit

    def batch_limit(self, first_seq: int, records: int) -> int:
        """How many records a message starting at ``first_seq`` may carry."""
        return 1 if first_seq <= self.split_until else records

    def on_sent(self, first: int, last: int, count: int, now: float, live: bool) -> None:
        if live:
            self.live_cursor = max(self.live_cursor, last)
        else:
            self.backlog_cursor = max(self.backlog_cursor, last)
        self.sent.append(Sent(first, last, count, now, live))
        self.unacked += count

    def skip(self, up_to: int, live: bool) -> None:
        """Records up to ``up_to`` need no sending (set aside, or gone from the outbox)."""
        if live:
            self.live_cursor = max(self.live_cursor, up_to)
        else:
            self.backlog_cursor = max(self.backlog_cursor, min(up_to, self.live_from))

    # -- what the cloud says --------------------------------------------------------------------

    def on_ack(self, seq: int, max_seen: int) -> bool:
        """Apply the cloud's ack; True if it moved forward."""
        self.max_seen = max(self.max_seen, max_seen, seq)
        if seq <= self.acked:
            return False
        self.acked = seq
        while self.sent and self.sent[0].last <= seq:
            self.unacked -= self.sent.popleft().count
        self.unacked = max(0, self.unacked)
        self.backlog_cursor = max(self.backlog_cursor, min(seq, self.live_from))
        self.live_cursor = max(self.live_cursor, seq)
        self._backoff = 1
        self._strikes = {k: v for k, v in self._strikes.items() if k > seq}
        return True

    def due(self, now: float) -> Sent | None:
        """The oldest sent range if it has waited for the ack longer than allowed."""
        if not self.sent:
            return None
        oldest = self.sent[0]
        return oldest if now - oldest.at >= self.resend_after * self._backoff else None

    def resend(self, oldest: Sent) -> int | None:
        """Go back to the ack and send everything after it again. Returns a seq to set aside
        when ``oldest`` is a single record that keeps getting lost while later ones arrive."""
        self.resends += 1
        poison = self._lost(oldest, lost_for_sure=self.max_seen > oldest.last)
        self._rewind()
        self._backoff = min(self._backoff * 2, MAX_BACKOFF)
        return poison

    def refused(self, first: int, last: int, count: int) -> int | None:
        """The broker refused the message ``first..last``: split it, or give up a single record."""
        poison = self._lost(Sent(first, last, count, 0.0, False), lost_for_sure=True, refused=True)
        self._rewind(to=first - 1)
        return poison

    def _lost(self, sent: Sent, lost_for_sure: bool, refused: bool = False) -> int | None:
        if not lost_for_sure:
            self._strikes.pop(sent.first, None)
            return None
        strikes = self._strikes[sent.first] = self._strikes.get(sent.first, 0) + 1
        if sent.count > 1:
            if refused or strikes >= SPLIT_AFTER:
                self.split_until = max(self.split_until, sent.last)
                self._strikes[sent.first] = 0
            return None
        if refused or strikes >= GIVE_UP_AFTER:
            self._strikes.pop(sent.first, None)
            return sent.first
        return None

    def _rewind(self, to: int | None = None) -> None:
        point = self.acked if to is None else max(self.acked, to)
        self.backlog_cursor = min(self.backlog_cursor, min(point, self.live_from))
        self.live_cursor = min(self.live_cursor, max(point, self.live_from))
        self.sent.clear()
        self.unacked = 0
