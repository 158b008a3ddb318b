"""What a sensors run actually sent, in a form a test can compare with what arrived."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class SensorReport:
    """Counts of one run.

    ``per_sensor`` counts, by sensor id, every payload the broker acknowledged on that sensor's
    topic (at QoS 0: handed to the socket), malformed ones included; ``valid`` is what an agent
    should accept. ``skipped_dropout`` slots were silent on purpose; ``not_sent`` ones failed
    or were still owed when the run ended (the sender could not keep the rate).
    """

    seed: int
    sensors: int
    rate_per_sensor: float
    qos: int
    scheduled: int = 0
    sent: int = 0
    valid: int = 0
    malformed: int = 0
    malformed_by_reason: dict[str, int] = field(default_factory=dict)
    skipped_dropout: int = 0
    not_sent: int = 0
    elapsed_s: float = 0.0
    rate_requested: float = 0.0
    rate_achieved: float = 0.0
    disconnects: int = 0
    per_sensor: dict[str, int] = field(default_factory=dict)
    malformed_per_sensor: dict[str, int] = field(default_factory=dict)

    def merge(self, other: SensorReport) -> None:
        """Add the counts of another process's part of the same run."""
        self.scheduled += other.scheduled
        self.sent += other.sent
        self.valid += other.valid
        self.malformed += other.malformed
        self.malformed_by_reason = _added(self.malformed_by_reason, other.malformed_by_reason)
        self.skipped_dropout += other.skipped_dropout
        self.not_sent += other.not_sent
        self.disconnects += other.disconnects
        self.elapsed_s = max(self.elapsed_s, other.elapsed_s)
        self.per_sensor = _by_index({**self.per_sensor, **other.per_sensor})
        self.malformed_per_sensor = _by_index(
            {**self.malformed_per_sensor, **other.malformed_per_sensor}
        )
        self.rate_achieved = self.sent / self.elapsed_s if self.elapsed_s else 0.0

    def summary(self) -> str:
        """A few lines for a person."""
        reasons = ", ".join(f"{k} {v}" for k, v in self.malformed_by_reason.items()) or "none"
        return "\n".join([
            f"seed {self.seed}: {self.sensors} sensors at {self.rate_per_sensor:g}/s each, "
            f"QoS {self.qos}",
            f"sent {self.sent} of {self.scheduled} scheduled in {self.elapsed_s:.1f} s "
            f"({self.rate_achieved:,.0f}/s of {self.rate_requested:,.0f}/s requested)",
            f"valid {self.valid}, malformed {self.malformed} ({reasons}), "
            f"silent in dropouts {self.skipped_dropout}, not sent {self.not_sent}",
        ])


def _added(left: dict[str, int], right: dict[str, int]) -> dict[str, int]:
    total = Counter(left)
    total.update(right)
    return dict(sorted(total.items()))


def _by_index(counts: dict[str, int]) -> dict[str, int]:
    """Sensor ids end in their index (``temp-007``): keep them in that order."""
    return dict(sorted(counts.items(), key=lambda item: item[0].rsplit("-", 1)[-1]))
