"""How several ingest workers split the fleet's data, given what the broker can do.

Three ways, chosen at start-up from the broker probe and the command line:

* ``mqtt-shared``: ``$share/<group>/<prefix>/+/data|status`` (Mosquitto, EMQX, HiveMQ, VerneMQ):
  the broker hands each message to one worker of the group.
* ``jetstream``: data from a JetStream consumer shared by the workers (NATS, ``--jetstream``);
  statuses stay on MQTT, unshared, so every worker sees every device's Last Will.
* ``unshared``: no ``$share/`` (RabbitMQ 3.10, or NATS without ``--jetstream``): every worker
  subscribes to everything and stores every message; the store keeps each seq once (per-device
  row locks), so the result is right, but a second worker adds availability, not throughput.
"""

from __future__ import annotations

from dataclasses import dataclass

from cloud_sync.protocol import Kind
from cloud_sync.server.broker_probe import BrokerFeatures


@dataclass(frozen=True)
class Sharing:
    mode: str
    share_group: str | None
    """What goes into the MQTT subscriptions (None: unshared)."""
    mqtt_kinds: tuple[Kind, ...]
    warning: str | None = None


def plan(features: BrokerFeatures, share_group: str | None, jetstream: bool) -> Sharing:
    """The sharing mode for this worker; ``warning`` says what the operator asked for and cannot have."""
    if jetstream:
        return Sharing("jetstream", None, ("status",))
    if not share_group:
        return Sharing("single", None, ("data", "status"))
    if features.shared_subscriptions is False:
        return Sharing(
            "unshared", None, ("data", "status"),
            f"--share-group {share_group}: the broker delivers nothing on $share/ subscriptions; "
            "this worker reads every device's data unshared (every worker stores every message, "
            "the store drops the repeats). On NATS, use --jetstream for workers that split the data.",
        )
    return Sharing("mqtt-shared", share_group, ("data", "status"))
