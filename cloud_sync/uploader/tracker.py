"""What the uploader has sent and what the cloud has accounted for: pure bookkeeping, no I/O.

Two cursors walk the outbox. On every connect the records that are already waiting become the
*backlog* (sent at a limited rate) and everything committed afterwards is *live* (sent first,
unthrottled). A sent message is remembered only as a range of seqs with the time it left; the
records themselves stay in the outbox until the cloud's ack covers them, so a resend reads them
again. The sent ranges are bounded by ``unacked_records``.

Resending is go-back-N: when the oldest range stays unacknowledged past ``resend_after``, both
cursors go back to the ack and everything after it is sent again (the cloud's store takes the
repeats idempotently). The timeout doubles while the ack does not move, up to 16 times. As TCP
does with its retransmission timer, a range's wait starts again whenever the ack moves: on a slow
link the messages of a window leave one after another, and one queued behind the others for
longer than ``resend_after`` is late, not lost, while the ones ahead of it keep being acknowledged.

On links far slower than the defaults assume (16-64 kbit/s: 2G/EDGE, satellite) one message of
``max_message_bytes`` takes a minute on the wire, longer than ``resend_after`` and the keepalive,
so no timer restart can tell it late from lost, and the broker may hang up while it is still
arriving. As TCP sizes its window by what the acks show, the tracker measures the rate at which
the cloud's ack covers bytes and (``message_bytes``) caps a message at what that rate carries in a
quarter of ``resend_after``; until the first ack it sends ``START_BYTES``, a few seconds even at
32 kbit/s. So every message's PUBACK and ack come within seconds, which keeps both the resend timer
and the dead-link watchdog honest without new settings. Should a message still need longer (sent
before the rate was known, or the link got slower), ``due`` waits at least twice the time the
unacknowledged bytes sent up to it need at that rate before resending it.

A message that keeps getting lost while the cloud receives what came after it (over the
broker's size limit on MQTT 3.1.1, which drops it silently), that the broker refuses (an MQTT 5
reason code), or on which the broker keeps closing the connection (Mosquitto 2.0 answers an
oversized MQTT 5 publish with a PUBACK code clients reject) is *poison*. A poison message of
several records makes the uploader halve its batch size; a poison single record is set aside,
counted and announced, so it never blocks the queue behind it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from itertools import takewhile

STRIKES = {"lost": 2, "refused": 1, "disconnect": 3}
"""How many times a message must be lost in each way before it is judged poison."""
MAX_BACKOFF = 16
START_BYTES = 16_000
"""The message size bound before the link's rate is known (4 s at 32 kbit/s)."""
MIN_BYTES = 2_000
SEND_TIME = 0.25
"""The share of ``resend_after`` one message may take on the wire at the measured rate."""


@dataclass(frozen=True)
class Verdict:
    """What to do about a poison message: send smaller batches, or set a record aside."""

    shrink_to: int | None = None
    set_aside: int | None = None


@dataclass
class Sent:
    first: int
    last: int
    count: int
    at: float
    live: bool
    size: int = 0
    waiting_since: float = field(init=False)
    """When its resend timer started: when it was sent, or when the ack last moved after that."""

    def __post_init__(self) -> None:
        self.waiting_since = self.at


class SendTracker:
    def __init__(self, unacked_records: int, resend_after: float) -> None:
        self.unacked_limit = unacked_records
        self.resend_after = resend_after
        self.acked = 0
        self.highest_sent = 0
        """The highest seq this process has sent (or announced, or let go): an ack beyond it
        acknowledges what the cloud cannot have, so it is refused."""
        self.max_seen = 0
        self.live_from = 0
        self.backlog_cursor = 0
        self.live_cursor = 0
        self._sent: tuple[deque[Sent], deque[Sent]] = (deque(), deque())
        """Backlog and live messages in flight, each in seq order."""
        self.unacked = 0
        self._backoff = 1
        self._strikes: dict[tuple[int, int], int] = {}
        self.resends = 0
        self.rate: float | None = None
        """Bytes per second the cloud's ack has been covering (smoothed); None until measured."""
        self._acked_at: float | None = None

    # -- connecting and sending -----------------------------------------------------------------

    def start(self, acked: int, last_seq: int) -> None:
        """A new connection: what is waiting now is backlog, what comes later is live."""
        self.acked = max(self.acked, acked)
        self.highest_sent = max(self.highest_sent, self.acked)
        self.live_from = max(last_seq, self.acked)
        self.backlog_cursor = self.acked
        self.live_cursor = self.live_from
        self._acked_at = None  # the time offline says nothing of the link's rate
        self._clear()

    @property
    def backlog_done(self) -> bool:
        return self.backlog_cursor >= self.live_from

    @property
    def room(self) -> bool:
        return self.unacked < self.unacked_limit

    def on_sent(self, first: int, last: int, count: int, now: float, live: bool, size: int = 0) -> None:
        if live:
            self.live_cursor = max(self.live_cursor, last)
        else:
            self.backlog_cursor = max(self.backlog_cursor, last)
        self._sent[live].append(Sent(first, last, count, now, live, size))
        self.unacked += count
        self.highest_sent = max(self.highest_sent, last)

    def skip(self, up_to: int, live: bool) -> None:
        """Records up to ``up_to`` need no sending (set aside, or gone from the outbox)."""
        self.highest_sent = max(self.highest_sent, up_to)
        if live:
            self.live_cursor = max(self.live_cursor, up_to)
        else:
            self.backlog_cursor = max(self.backlog_cursor, min(up_to, self.live_from))

    # -- what the cloud says --------------------------------------------------------------------

    def on_ack(self, seq: int, max_seen: int, now: float) -> bool:
        """Apply the cloud's ack (received at ``now``); True if it moved forward."""
        self.max_seen = max(self.max_seen, max_seen, seq)
        if seq <= self.acked:
            return False
        self.acked = seq
        size, sent_at = 0, now
        for sent in self._sent:
            while sent and sent[0].last <= seq:
                done = sent.popleft()
                self.unacked -= done.count
                size += done.size
                sent_at = min(sent_at, done.at)
            if sent:
                sent[0].waiting_since = max(sent[0].waiting_since, now)
        self._measure(size, sent_at, now)
        self.backlog_cursor = max(self.backlog_cursor, min(seq, self.live_from))
        self.live_cursor = max(self.live_cursor, seq)
        self._backoff = 1
        self._strikes = {k: v for k, v in self._strikes.items() if k[0] > seq}
        return True

    def _measure(self, size: int, sent_at: float, now: float) -> None:
        """One sample of the link's rate: ``size`` bytes acknowledged at ``now``, sent at
        ``sent_at``. They were on the wire from then or from the previous ack, whichever is
        later; sent after it, the link may have been idle and the sample holds a round trip, so
        it may raise the estimate but not lower it (TCP BBR's application-limited samples)."""
        previous, self._acked_at = self._acked_at, now
        if not size:
            return
        queued = previous is not None and sent_at < previous
        elapsed = now - (previous if queued and previous is not None else sent_at)
        sample = size / max(elapsed, 0.001)
        if self.rate is None:
            self.rate = sample
        elif queued:
            self.rate += (sample - self.rate) / 4
        elif sample > self.rate:
            self.rate = sample

    def message_bytes(self, limit: int) -> int:
        """The most a message of several records should carry: what the link has shown it takes
        in ``SEND_TIME`` of ``resend_after``, within ``MIN_BYTES`` and ``limit``."""
        if self.rate is None:
            return min(limit, START_BYTES)
        return min(limit, max(MIN_BYTES, int(self.rate * self.resend_after * SEND_TIME)))

    def due(self, now: float) -> Sent | None:
        """The oldest sent range if it has waited for the ack longer than allowed: ``resend_after``,
        or twice what the link needs at the measured rate for the unacknowledged bytes sent up
        to it (itself included), whichever is longer."""
        heads = [sent[0] for sent in self._sent if sent]
        if not heads:
            return None
        oldest = min(heads, key=lambda s: s.waiting_since)
        waited = now - oldest.waiting_since
        if waited < self.resend_after * self._backoff:
            return None
        if self.rate is not None:
            other = self._sent[not oldest.live]  # its own queue: nothing unacknowledged ahead
            ahead = oldest.size + sum(s.size for s in takewhile(lambda s: s.at < oldest.at, other))
            if waited < 2 * ahead / self.rate * self._backoff:
                return None
        return oldest

    def resend(self, oldest: Sent, later_arrived: bool = False) -> Verdict | None:
        """Go back to the ack and send everything after it again. When the cloud has meanwhile
        received later records (or a probe sent after it: ``later_arrived``), ``oldest`` was
        lost on the way: it may be poison."""
        self.resends += 1
        verdict = None
        if self.max_seen > oldest.last or later_arrived:
            verdict = self.strike(oldest, "lost")
        else:  # the cloud hears nothing: an outage, so wait longer before the next resend
            self._backoff = min(self._backoff * 2, MAX_BACKOFF)
        self._rewind()
        return verdict

    def refused(self, sent: Sent) -> Verdict | None:
        """The broker refused ``sent`` (an MQTT 5 reason code)."""
        verdict = self.strike(sent, "refused")
        self._rewind(to=sent.first - 1)
        return verdict

    def strike(self, sent: Sent, how: str) -> Verdict | None:
        """Count one more loss of ``sent``; a verdict once it has been lost too often."""
        key = (sent.first, sent.count)
        strikes = self._strikes[key] = self._strikes.get(key, 0) + 1
        if strikes < STRIKES[how]:
            return None
        del self._strikes[key]
        if sent.count > 1:
            return Verdict(shrink_to=max(1024, sent.size // 2))
        return Verdict(set_aside=sent.first)

    def _rewind(self, to: int | None = None) -> None:
        point = self.acked if to is None else max(self.acked, to)
        self.backlog_cursor = min(self.backlog_cursor, min(point, self.live_from))
        self.live_cursor = min(self.live_cursor, max(point, self.live_from))
        self._clear()

    def _clear(self) -> None:
        for sent in self._sent:
            sent.clear()
        self.unacked = 0
