"""The SQLite outbox: the durability boundary between processing and sync."""

from agent.outbox.records import Changes, OutboxRecord, Quarantined, as_jsonl
from agent.outbox.schema import DB_NAME
from agent.outbox.store import Outbox

__all__ = ["DB_NAME", "Changes", "Outbox", "OutboxRecord", "Quarantined", "as_jsonl"]
