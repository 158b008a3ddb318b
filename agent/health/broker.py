"""What the local broker says about itself: Mosquitto's count of publishes it dropped.

Mosquitto queues QoS 1 readings for a client's persistent session while the client is away, up
to ``max_queued_messages``; beyond that it drops them without telling the publisher. It only
counts them, in ``$SYS``: the total since it started (``publish/messages/dropped``) and a
15-minute load average (``load/publish/dropped/15min``, drops a minute). Both are retained and
published when they change, every ``sys_interval``, and Mosquitto 2.0 lets each expire 60 s
after it was published: the total is readable for a minute after the last drop, the average (it
changes while it decays) for hours. The agent never sees a reading the broker dropped, so its own
counters cannot show the loss: ``edge-agent status`` asks the broker instead.
"""

from __future__ import annotations

from typing import Any

from agent.config import MqttSourceConfig
from cloud_sync.mqtt import read_retained

DROPPED = "$SYS/broker/publish/messages/dropped"
DROP_RATE = "$SYS/broker/load/publish/dropped/15min"
UPTIME = "$SYS/broker/uptime"
ADVICE = "raise max_queued_messages (configs/mosquitto-local.conf, docs/install.md)"


def read_drops(source: MqttSourceConfig, timeout: float = 3.0) -> dict[str, Any] | None:
    """``{"dropped": total or None, "dropped_per_min_15": average or None}`` from the broker's
    ``$SYS``; ``None`` when it cannot be reached or does not answer within ``timeout``."""
    # UPTIME last: always there, it says the other two were sent if they are retained
    got = read_retained(source, f"{source.client_id or 'edge-agent'}-status", (DROPPED, DROP_RATE, UPTIME),
                        timeout)
    if got is None:
        return None
    return {
        "dropped": _number(got.get(DROPPED), int),
        "dropped_per_min_15": _number(got.get(DROP_RATE), float),
    }


def _number(payload: bytes | None, kind: type[int] | type[float]) -> Any:
    try:
        return None if payload is None else kind(payload)
    except ValueError:
        return None


def broker_report(sources: list[Any], timeout: float = 3.0) -> tuple[dict[str, Any], list[str]]:
    """For each MQTT source, ``{name: {"url", "dropped", "dropped_per_min_15"}}`` (figures
    ``None`` where the broker did not say), and a warning per broker that dropped publishes."""
    report: dict[str, Any] = {}
    warnings: list[str] = []
    for source in sources:
        if not isinstance(source, MqttSourceConfig):
            continue
        drops = read_drops(source, timeout) or {"dropped": None, "dropped_per_min_15": None}
        report[source.name] = {"url": source.url, **drops}
        total, rate = drops["dropped"], drops["dropped_per_min_15"]
        said = f"the broker of source {source.name} ({source.url})"
        if total:
            warnings.append(f"{said} dropped {total} publishes since it started (a client's queue was"
                            f" full, readings may be lost): {ADVICE}")
        elif rate:
            warnings.append(f"{said} has been dropping publishes (about {rate:.0f} a minute, 15-minute"
                            f" average; a client's queue was full, readings may be lost): {ADVICE}")
    return report, warnings
