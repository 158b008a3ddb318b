"""The sensors simulator without a broker: signals, faults, malformed payloads, pacing."""

from __future__ import annotations

import itertools
import json
import math
import random
from collections import Counter

import pytest

from agent.sources.readings import Rejected, decode_reading
from simulators.episodes import Episodes
from simulators.pacing import Pacer, slots
from simulators.payloads import MALFORMED, reading
from simulators.sensor_set import SensorOptions, SensorSet
from simulators.signals import DAY, KINDS, NO_FAULTS, Faults, Sensor

NOW = 1_700_000_000.0


def payloads(options: SensorOptions, seed: int, count: int, part: int = 0, parts: int = 1):
    sensors = SensorSet(options, seed, part, parts)
    out = []
    for number in range(count):
        item = sensors.slot(number, NOW)
        if item is not None:
            position, payload, reason = item
            out.append((sensors.topics[position], payload, reason))
    return out


def test_one_seed_gives_the_same_readings_and_another_seed_does_not():
    options = SensorOptions(sensors=7, rate=10, malformed=0.1)
    first, again = payloads(options, 42, 5000), payloads(options, 42, 5000)
    assert first == again
    assert payloads(options, 43, 5000) != first


def test_splitting_sensors_over_processes_sends_the_same_readings():
    options = SensorOptions(sensors=6, rate=5, malformed=0.2)
    whole = payloads(options, 7, 600)
    halves = payloads(options, 7, 300, 0, 2) + payloads(options, 7, 300, 1, 2)
    by_topic = lambda items: sorted(items, key=lambda item: item[0])  # noqa: E731
    assert by_topic(whole) == by_topic(halves)


def test_malformed_share_roughly_holds_and_each_is_refused_for_its_stated_reason():
    options = SensorOptions(sensors=10, rate=10, malformed=0.2, faults=False)
    items = payloads(options, 1, 20_000)
    broken = [(payload, reason) for _, payload, reason in items if reason]
    assert 0.18 < len(broken) / len(items) < 0.22
    assert {reason for _, reason in broken} == {reason for reason, _ in MALFORMED}
    for payload, reason in broken:
        with pytest.raises(Rejected) as refused:
            decode_reading("sensors/x", "x", payload, NOW)
        assert refused.value.reason == reason, payload
    for _, payload, reason in items:
        if reason is None:
            assert decode_reading("sensors/x", "x", payload, NOW).data["value"] is not None


def test_no_malformed_payloads_unless_asked():
    assert all(reason is None for *_, reason in payloads(SensorOptions(sensors=3), 5, 3000))


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_kind_stays_in_its_bounds_and_looks_like_its_kind(kind):
    sensor = Sensor("x-001", KINDS[kind], seed=3, faults=Faults())
    values = [v for t in range(0, 20_000, 5) if (v := sensor.reading(float(t))) is not None]
    spec = KINDS[kind]
    assert all(spec.low <= v <= spec.high for v in values)
    low, high = spec.base
    assert low - 3 * abs(spec.daily) - spec.cycle <= sorted(values)[len(values) // 2] \
        <= high + 3 * abs(spec.daily) + spec.cycle
    assert len(set(values)) > 50  # noise, not a constant


def test_temperature_follows_a_daily_cycle():
    sensor = Sensor("temp-001", KINDS["temperature"], seed=1, faults=NO_FAULTS)
    hourly = [sensor.reading(hour * 3600.0) for hour in range(24)]
    assert max(hourly) - min(hourly) > 5  # amplitude 4 each way
    # Afternoon peak and night trough, twelve hours apart give or take noise.
    peak, trough = hourly.index(max(hourly)), hourly.index(min(hourly))
    assert abs((peak - trough) % 24 - 12) <= 2


def test_time_scale_compresses_the_day():
    fast = Sensor("temp-001", KINDS["temperature"], seed=1, faults=NO_FAULTS, time_scale=DAY / 24)
    values = [fast.reading(float(s)) for s in range(24)]
    assert max(values) - min(values) > 5


def test_a_stuck_sensor_repeats_its_last_value_for_a_while():
    faults = Faults(stuck_gap=20.0, stuck_length=10.0)
    sensor = Sensor("temp-001", KINDS["temperature"], seed=2, faults=faults, stuck=True)
    values = [sensor.reading(t / 10) for t in range(3000)]
    longest = run = 1
    for before, after in itertools.pairwise(values):
        run = run + 1 if after == before else 1
        longest = max(longest, run)
    assert longest > 30  # over 3 s of identical readings; noise alone never does that


def test_dropouts_silence_a_sensor_for_stretches():
    faults = Faults(dropout_gap=30.0, dropout_length=5.0)
    sensor = Sensor("hum-001", KINDS["humidity"], seed=4, faults=faults)
    silent = [sensor.reading(t / 10) is None for t in range(6000)]
    assert 0.03 < sum(silent) / len(silent) < 0.4
    assert "".join("x" if s else "." for s in silent).count("x" * 10) >= 1


def test_spikes_stand_out_from_the_noise():
    sensor = Sensor("press-001", KINDS["pressure"], seed=5,
                    faults=Faults(spike_probability=0.01, dropout_gap=math.inf))
    values = [sensor.reading(float(t)) for t in range(5000)]
    jumps = [abs(b - a) for a, b in itertools.pairwise(values) if a and b]
    assert sum(1 for j in jumps if j > 5) > 20  # noise is 0.05 hPa, spikes ~12


def test_episodes_alternate_reproducibly():
    a = Episodes(random.Random(1), 10.0, 2.0)
    b = Episodes(random.Random(1), 10.0, 2.0)
    times = [t / 4 for t in range(4000)]
    assert [a.active(t) for t in times] == [b.active(t) for t in times]


def test_a_reading_payload_is_what_design_md_says():
    body = json.loads(reading(21.53, NOW, "C"))
    assert body == {"value": 21.53, "ts": NOW, "unit": "C"}


def test_sensor_ids_and_kinds_go_round_robin():
    sensors = SensorSet(SensorOptions(sensors=12, kinds=("temperature", "power")), 0)
    assert [s.id for s in sensors.sensors[:3]] == ["temp-000", "power-001", "temp-002"]
    assert Counter(s.kind.name for s in sensors.sensors) == {"temperature": 6, "power": 6}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sensors": 0}, "--sensors"),
        ({"rate": 0}, "--rate"),
        ({"malformed": 1.5}, "--malformed"),
        ({"kinds": ("temperature", "lava")}, "unknown sensor kinds"),
        ({"sensors": 2, "processes": 3}, "--processes"),
    ],
)
def test_bad_options_are_refused_with_the_option_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SensorOptions(**kwargs)


def test_pacer_counts_what_is_due():
    pacer = Pacer(rate=100, total=50)
    start = pacer.started
    assert pacer.due(start) == 1
    assert pacer.due(start + 0.1) == 11
    assert pacer.due(start + 10) == 50
    assert pacer.next_wait(11, start + 0.108) == pytest.approx(pacer.tick)  # batch a tick
    assert pacer.next_wait(11, start + 0.1) == pytest.approx(0.01)
    assert pacer.next_wait(30, start + 0.1) == pytest.approx(0.2)
    assert pacer.next_wait(5, start + 0.1) == 0.0
    assert slots(10, 2.0) == 20 and slots(3, 0.1) == 0
