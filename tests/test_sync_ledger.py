"""Cloud-side accounting (the ack), the uploader's bookkeeping, and the backlog rate limit."""

from __future__ import annotations

import pytest

from cloud_sync.protocol import BadRecord, DataBatch, DroppedRange, Record
from cloud_sync.server.ledger import DeviceState, Quarantined, Status, plan_flush, settle
from cloud_sync.uploader.ratelimit import RateLimit
from cloud_sync.uploader.tracker import START_BYTES, SendTracker, Sent


@pytest.mark.parametrize(
    ("ranges", "acked", "left", "missing"),
    [
        ([(1, 5)], 5, [], 0),
        ([(1, 5), (6, 9)], 9, [], 0),
        ([(6, 9), (1, 5)], 9, [], 0),
        ([(3, 5)], 0, [(3, 5)], 2),
        ([(3, 5), (1, 1)], 1, [(3, 5)], 1),
        ([(3, 5), (1, 2)], 5, [], 0),
        ([(8, 9), (3, 4), (1, 1), (5, 7)], 1, [(3, 9)], 1),
        ([(1, 3), (2, 6), (1, 1)], 6, [], 0),  # repeats change nothing
        ([(10, 12), (20, 21), (13, 19)], 0, [(10, 21)], 9),
    ],
)
def test_the_ack_is_the_end_of_the_contiguous_run(ranges, acked, left, missing) -> None:
    state = DeviceState("d")
    for first, last in ranges:
        state.add(first, last)
    assert (state.acked, state.ranges, state.missing) == (acked, left, missing)


def test_jumping_over_a_hole_counts_what_never_came_as_lost() -> None:
    state = DeviceState("d")
    state.add(1, 2)
    state.add(5, 6)
    state.add(9, 9)
    state.jump(7)  # 3, 4 and 7 never came
    assert (state.acked, state.lost, state.ranges) == (7, 3, [(9, 9)])
    state.add(8, 8)
    assert state.acked == 9


def batch(seqs, *, epoch="e1", released=0, dropped=(), bad=()) -> DataBatch:
    return DataBatch(
        "gw",
        epoch,
        released,
        records=[Record(s, "win", 1.0, '{"count":1}') for s in seqs],
        bad=[BadRecord(s, "ts", {}) for s in bad],
        dropped=list(dropped),
    )


def flush(state: DeviceState, *batches: DataBatch, inserted: int | None = None):
    states = {"gw": state}
    result = plan_flush(states, [("edge/gw/data", b) for b in batches], now=100.0)
    settle(states, result, {"gw": sum(result.attempted.values()) if inserted is None else inserted})
    return result


def test_stored_bad_and_dropped_seqs_all_move_the_ack_and_are_counted() -> None:
    state = DeviceState("gw")
    result = flush(state, batch([1, 2], bad=[3], dropped=[DroppedRange(4, 6, "buffer_full")]), batch([7]))
    assert state.acked == 7 and state.records == 3
    assert state.bad_records == 1 and state.dropped == {"buffer_full": 3}
    assert [q.seq for q in result.quarantined] == [3]
    assert result.acks == {"gw"} and state.last_sync == 100.0


def test_duplicates_are_what_the_store_did_not_insert() -> None:
    state = DeviceState("gw")
    flush(state, batch([1, 2, 3]))
    result = flush(state, batch([2, 3, 4]), inserted=1)
    assert (state.records, state.duplicates, state.acked) == (4, 2, 4)
    assert result.counters["duplicates"] == 2


def test_a_dropped_range_already_announced_is_not_counted_twice() -> None:
    state = DeviceState("gw")
    flush(state, batch([], dropped=[DroppedRange(5, 6, "buffer_full")]))
    flush(state, batch([], dropped=[DroppedRange(5, 6, "buffer_full")]))
    assert state.dropped == {"buffer_full": 2} and state.acked == 0 and state.ranges == [(5, 6)]


def test_released_seqs_the_cloud_never_got_are_counted_lost() -> None:
    state = DeviceState("gw", epoch="e1")
    flush(state, batch([1, 2]))
    flush(state, batch([10], released=8))  # the device let go of 3..8 (a restored cloud store?)
    assert (state.acked, state.lost) == (8, 6)


def test_a_new_outbox_must_not_reuse_seqs_and_takes_over_when_it_does_not() -> None:
    state = DeviceState("gw")
    flush(state, batch([1, 2, 3]))
    refused = flush(state, batch([1, 2], epoch="e2"))
    assert state.epoch == "e1" and state.records == 3 and refused.batches == []
    assert [q.reason for q in refused.quarantined] == ["epoch_conflict"]
    assert refused.acks == {"gw"}  # the device hears how far the cloud got, and renumbers
    flush(state, batch([4, 5], epoch="e2"))
    assert (state.epoch, state.acked, state.records) == ("e2", 5, 5)


def test_status_and_will_keep_the_last_figures() -> None:
    state = DeviceState("gw")
    states = {"gw": state}
    plan_flush(states, [("edge/gw/status", Status("gw", {"online": True, "backlog": {"rows": 5}}, 50.0))])
    plan_flush(states, [("edge/gw/status", Status("gw", {"online": False}, 60.0))])
    assert state.online is False and state.status["backlog"] == {"rows": 5} and state.status_at == 60.0


def test_quarantined_messages_are_counted_by_reason() -> None:
    states = {"gw": DeviceState("gw")}
    result = plan_flush(
        states, [("edge/gw/data", Quarantined("edge/gw/data", "bad_json", "x", b"{", 1, "gw"))]
    )
    assert result.counters == {"quarantined.bad_json": 1} and states["gw"].last_seen is not None


# -- the uploader's bookkeeping -------------------------------------------------------------------


def test_backlog_and_live_cursors_and_the_window() -> None:
    tracker = SendTracker(unacked_records=10, resend_after=5.0)
    tracker.start(acked=100, last_seq=150)
    assert (tracker.backlog_cursor, tracker.live_cursor, tracker.backlog_done) == (100, 150, False)
    tracker.on_sent(151, 155, 5, now=0.0, live=True)
    tracker.on_sent(101, 105, 5, now=0.0, live=False)
    assert not tracker.room
    assert tracker.on_ack(105, 155, now=1.0) and tracker.room and tracker.unacked == 5
    assert not tracker.on_ack(104, 155, now=1.0)


def test_resend_goes_back_to_the_ack_and_backs_off_while_the_cloud_hears_nothing() -> None:
    tracker = SendTracker(unacked_records=100, resend_after=5.0)
    tracker.start(acked=0, last_seq=0)
    tracker.on_sent(1, 10, 10, now=0.0, live=True)
    tracker.on_sent(11, 20, 10, now=1.0, live=True)
    assert tracker.due(4.0) is None
    oldest = tracker.due(5.0)
    assert oldest is not None and tracker.resend(oldest) is None
    assert tracker.live_cursor == 0 and tracker.unacked == 0
    tracker.on_sent(1, 20, 20, now=10.0, live=True)
    assert tracker.due(19.0) is None and tracker.due(20.0) is not None  # waited twice as long


def test_on_a_slow_link_a_message_queued_behind_others_is_late_not_lost() -> None:
    """Three messages leave at once and the link takes 10 s for each: the third is acknowledged
    30 s after it was sent, but the ack moved every 10 s, so nothing is resent."""
    tracker = SendTracker(unacked_records=100, resend_after=15.0)
    tracker.start(acked=0, last_seq=0)
    for first in (1, 11, 21):
        tracker.on_sent(first, first + 9, 10, now=0.0, live=False)
    for now, acked in ((10.0, 10), (20.0, 20)):
        assert tracker.due(now) is None
        assert tracker.on_ack(acked, acked, now=now)
    assert tracker.due(30.0) is None
    assert tracker.on_ack(30, 30, now=30.0) and tracker.unacked == 0
    # an ack that stops moving still ends in a resend, resend_after after it last moved
    tracker.on_sent(31, 40, 10, now=31.0, live=False)
    tracker.on_sent(41, 50, 10, now=31.0, live=False)
    assert tracker.on_ack(40, 40, now=35.0)
    assert tracker.due(49.9) is None and tracker.due(50.0) is not None


def test_messages_are_sized_to_what_the_acks_show_the_link_carries() -> None:
    """A 32 kbit/s link (4,000 bytes/s): messages of 16 kB queued back to back are acknowledged
    4 s apart, so a message is cut to what that rate carries in a quarter of ``resend_after``."""
    tracker = SendTracker(unacked_records=1000, resend_after=15.0)
    tracker.start(acked=0, last_seq=0)
    assert tracker.message_bytes(256_000) == START_BYTES  # nothing measured yet
    for i in range(4):
        tracker.on_sent(i * 10 + 1, i * 10 + 10, 10, now=0.0, live=False, size=16_000)
    for i in range(4):
        assert tracker.on_ack(i * 10 + 10, i * 10 + 10, now=4.3 + 4.0 * i)
    assert tracker.rate is not None and 3_700 < tracker.rate < 4_000
    assert 14_000 < tracker.message_bytes(256_000) < 15_000
    # a small message sent on an idle link is acknowledged a round trip later: that says nothing
    # of the rate, and does not lower it
    tracker.on_sent(41, 41, 1, now=30.0, live=True, size=300)
    assert tracker.on_ack(41, 41, now=30.4)
    assert 14_000 < tracker.message_bytes(256_000) < 15_000
    # a fast link: the bound grows to the configured limit at once
    for first in (42, 52):
        tracker.on_sent(first, first + 9, 10, now=40.0, live=False, size=200_000)
    assert tracker.on_ack(51, 51, now=40.05) and tracker.on_ack(61, 61, now=40.1)
    assert tracker.message_bytes(256_000) == 256_000


def test_a_message_the_link_needs_longer_for_than_resend_after_is_not_resent_early() -> None:
    """At a measured 4,000 bytes/s, 100 kB sent at once need 25 s: the resend waits twice that
    (late, not lost); a message that small links carry in time keeps ``resend_after``."""
    tracker = SendTracker(unacked_records=1000, resend_after=15.0)
    tracker.start(acked=0, last_seq=0)
    tracker.on_sent(1, 10, 10, now=0.0, live=False, size=16_000)
    tracker.on_sent(11, 20, 10, now=0.0, live=False, size=16_000)
    assert tracker.on_ack(10, 10, now=4.0) and tracker.on_ack(20, 20, now=8.0)
    assert tracker.rate == 4_000
    tracker.on_sent(21, 30, 10, now=10.0, live=False, size=40_000)
    tracker.on_sent(31, 40, 10, now=10.0, live=False, size=60_000)
    assert tracker.due(29.9) is None  # the first needs 10 s on the wire: it waits 20 s
    late = tracker.due(30.0)
    assert late is not None and late.first == 21
    assert tracker.on_ack(30, 30, now=20.0)  # it came in time; the next needs 15 s more
    assert tracker.rate == 4_000
    assert tracker.due(49.9) is None
    oldest = tracker.due(50.0)
    assert oldest is not None and oldest.first == 31
    tracker.resend(oldest)
    tracker.on_sent(31, 40, 10, now=60.0, live=False, size=4_000)
    # 1 s on the wire: resend_after it is, doubled as the cloud heard nothing before the resend
    assert tracker.due(89.9) is None and tracker.due(90.0) is not None


def test_a_message_lost_while_later_ones_arrive_shrinks_batches_then_sets_a_record_aside() -> None:
    tracker = SendTracker(unacked_records=100, resend_after=1.0)
    tracker.start(acked=0, last_seq=0)
    verdicts = []
    for now in (0.0, 2.0):
        tracker.on_sent(1, 10, 10, now=now, live=True, size=5000)
        tracker.on_ack(0, max_seen=30, now=now)  # the cloud got seqs after 10
        oldest = tracker.due(now + 1.0)
        assert oldest is not None
        verdicts.append(tracker.resend(oldest))
    assert verdicts[0] is None and verdicts[1] is not None and verdicts[1].shrink_to == 2500
    tracker.on_sent(1, 1, 1, now=5.0, live=True, size=3000)
    assert tracker.resend(Sent(1, 1, 1, 5.0, True, 3000)) is None
    verdict = tracker.resend(Sent(1, 1, 1, 7.0, True, 3000))
    assert verdict is not None and verdict.set_aside == 1


def test_a_refused_single_record_is_set_aside_at_once() -> None:
    tracker = SendTracker(unacked_records=100, resend_after=1.0)
    tracker.start(acked=0, last_seq=0)
    verdict = tracker.refused(Sent(7, 7, 1, 0.0, True, 100))
    assert verdict is not None and verdict.set_aside == 7


def test_the_rate_limit_spaces_messages_by_bytes_and_by_count() -> None:
    now = [0.0]
    limit = RateLimit(bytes_per_s=1000, messages_per_s=2, clock=lambda: now[0])
    assert limit.delay() == 0
    limit.take(1500)  # a message larger than a second's allowance still goes...
    assert limit.delay() == pytest.approx(0.5)  # ...and the next waits for the debt
    now[0] = 0.5
    limit.take(10)
    assert limit.delay() == pytest.approx(0.01)
    assert RateLimit(0, 0).unlimited and RateLimit(0, 0).delay() == 0
