"""``edge-sim sensors``: simulated sensors publishing readings to a broker at a steady rate.

Each process paces its share of the sensors: what is due goes out in one batch, then it reads
acknowledgements until the next tick. Two runs with one seed send the same readings (values,
faults, malformed payloads), however many processes share the work; only ``ts``, the time of
sending, differs.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from typing import cast

from simulators.pacing import Pacer, slots
from simulators.publisher import WindowedPublisher
from simulators.sensor_report import SensorReport
from simulators.sensor_set import SensorOptions, SensorSet

log = logging.getLogger(__name__)

MAX_BATCH = 2000  # slots published between two reads of acknowledgements


def run_sensors(options: SensorOptions) -> SensorReport:
    """Publish for ``options.duration`` seconds and report what the broker acknowledged."""
    seed = options.seed if options.seed is not None else int.from_bytes(os.urandom(4), "big")
    if options.processes == 1:
        return run_part(options, seed, 0, 1)
    with ProcessPoolExecutor(options.processes) as pool:
        futures = [pool.submit(run_part, options, seed, part, options.processes)
                   for part in range(options.processes)]
        reports = [future.result() for future in futures]
    report = reports[0]
    for other in reports[1:]:
        report.merge(other)
    report.sensors = options.sensors
    report.rate_requested = options.sensors * options.rate
    return report


def run_part(options: SensorOptions, seed: int, part: int, parts: int) -> SensorReport:
    """One process's share: the sensors whose index is ``part`` modulo ``parts``."""
    sensors = SensorSet(options, seed, part, parts)
    count = len(sensors.sensors)
    total = count * slots(options.rate, options.duration)
    report = SensorReport(seed, count, options.rate, options.qos, scheduled=total,
                          rate_requested=count * options.rate)
    publisher = WindowedPublisher(options.host, options.port, options.qos, options.window)
    publisher.connect()
    pacer = Pacer(report.rate_requested, total)
    # Late slots are still sent, but not past this: a run must end near its duration.
    deadline = pacer.started + options.duration + max(1.0, 0.05 * options.duration)
    skipped = _publish(sensors, publisher, pacer, deadline)
    # The schedule spans the whole duration; a sender that fell behind took longer.
    report.elapsed_s = max(time.monotonic() - pacer.started, options.duration)
    publisher.flush(timeout=10.0)
    publisher.close()
    _count(report, sensors, publisher, skipped)
    return report


def _publish(sensors: SensorSet, publisher: WindowedPublisher, pacer: Pacer,
             deadline: float) -> int:
    """The pacing loop; returns how many slots were silent (dropouts)."""
    done = skipped = 0
    slot, topics, wall = sensors.slot, sensors.topics, time.time
    while done < pacer.total:
        now = time.monotonic()
        if now > deadline:
            log.warning("behind the requested rate: %d slots not sent", pacer.total - done)
            break
        due = min(pacer.due(now), done + MAX_BATCH)
        stamp = wall()
        while done < due:
            item = slot(done, stamp)
            done += 1
            if item is None:
                skipped += 1
                continue
            position, payload, reason = item
            publisher.publish(topics[position], payload, (position, reason))
        publisher.service(pacer.next_wait(done))
    return skipped


def _count(report: SensorReport, sensors: SensorSet, publisher: WindowedPublisher,
           skipped: int) -> None:
    per_sensor: Counter[str] = Counter()
    malformed: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    for key, count in publisher.acked.items():
        position, reason = cast(tuple[int, str | None], key)  # the keys _publish gave
        sensor_id = sensors.sensors[position].id
        per_sensor[sensor_id] += count
        if reason is not None:
            malformed[sensor_id] += count
            reasons[reason] += count
    report.per_sensor = {sensor.id: per_sensor[sensor.id] for sensor in sensors.sensors}
    report.malformed_per_sensor = {s.id: malformed[s.id] for s in sensors.sensors
                                   if malformed[s.id]}
    report.malformed_by_reason = dict(sorted(reasons.items()))
    report.sent = sum(per_sensor.values())
    report.malformed = sum(reasons.values())
    report.valid = report.sent - report.malformed
    report.skipped_dropout = skipped
    report.not_sent = report.scheduled - skipped - report.sent
    report.disconnects = publisher.disconnects
    report.rate_achieved = report.sent / report.elapsed_s
