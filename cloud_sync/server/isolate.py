"""One message that cannot be stored must not stop the others: a flush that fails on the data
itself (a number the engine cannot hold, a value JSON cannot encode) is written again in halves
until the message at fault is alone; it is quarantined with the engine's reason, and every other
message of the flush is stored as usual. A failure of the store itself (it is down, the disk is
full) is not the data's fault: it goes up, and the ingest keeps the flush and retries it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from cloud_sync.server.ledger import DeviceState, Flush, Incoming, Quarantined
from cloud_sync.server.store import Store

log = logging.getLogger(__name__)

QUARANTINE_BYTES = 4096
"""How much of a bad message is kept."""
_DATA_ERRORS = frozenset({"DataError", "IntegrityError", "JSONEncodeError"})
"""Exception class names (sqlite3, psycopg, orjson) that blame the values written."""


@dataclass(frozen=True)
class Message:
    """A message of a flush: as received, and as decoded."""

    topic: str
    payload: bytes
    item: Incoming


def unstorable(exc: BaseException) -> bool:
    """Whether ``exc`` blames the values written rather than the store."""
    if isinstance(exc, OverflowError | TypeError | ValueError):
        return True
    return any(cls.__name__ in _DATA_ERRORS for cls in type(exc).__mro__)


def write(store: Store, messages: list[Message], now: float) -> tuple[Flush, dict[str, DeviceState]]:
    """Store ``messages``; a message the store cannot take is quarantined instead (see above)."""
    try:
        return store.write([(m.topic, m.item) for m in messages], now)
    except Exception as exc:
        if not unstorable(exc):
            raise
        if len(messages) == 1:
            return store.write([(messages[0].topic, _quarantined(messages[0], exc))], now)
        log.debug("a flush of %d messages cannot be stored (%r): writing it in halves", len(messages), exc)
    middle = len(messages) // 2
    first, states = write(store, messages[:middle], now)
    second, later = write(store, messages[middle:], now)
    return merge(first, second), {**states, **later}


def _quarantined(message: Message, exc: BaseException) -> Quarantined:
    item = message.item
    device_id = item.device_id
    detail = f"the store cannot hold this message: {type(exc).__name__}: {exc}"[:500]
    log.warning("quarantined a message on %s: %s", message.topic[:200], detail)
    return Quarantined(message.topic[:1024], "unstorable", detail, message.payload[:QUARANTINE_BYTES],
                       len(message.payload), device_id)


Written = tuple[Flush, dict[str, DeviceState]]


def combine(before: Written | None, after: Written) -> Written:
    """Two writes of one flush, one after the other, as one."""
    if before is None:
        return after
    return merge(before[0], after[0]), {**before[1], **after[1]}


def merge(first: Flush, second: Flush) -> Flush:
    """Two flushes written one after the other, as one (for the acks and the counters)."""
    merged = Flush(
        received_at=second.received_at,
        batches=first.batches + second.batches,
        dropped=first.dropped + second.dropped,
        quarantined=first.quarantined + second.quarantined,
        acks=first.acks | second.acks,
        probes={**first.probes},
        counters={**first.counters},
        attempted={**first.attempted},
    )
    for device, probe in second.probes.items():
        merged.probes[device] = max(probe, merged.probes.get(device, 0))
    for name, value in second.counters.items():
        merged.count(name, value)
    for device, value in second.attempted.items():
        merged.attempted[device] = merged.attempted.get(device, 0) + value
    return merged
