"""What goes into the outbox in one commit, and what comes out of it."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from agent import codec
from agent.outbox.checkpoint import Checkpoint


@dataclass(frozen=True)
class OutboxRecord:
    seq: int
    stream: str
    ts: float
    data: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "stream": self.stream, "ts": self.ts, "data": self.data}


@dataclass(frozen=True)
class Quarantined:
    module: str
    topic: str
    ts: float
    data: dict[str, Any]
    error: str


@dataclass
class Changes:
    """Everything one commit writes, in one transaction."""

    records: list[tuple[str, float, dict[str, Any]]] = field(default_factory=list)
    counters: dict[tuple[str, str], int] = field(default_factory=dict)
    quarantined: list[Quarantined] = field(default_factory=list)
    module_state: dict[str, dict[str, Any]] = field(default_factory=dict)
    health: dict[str, dict[str, Any]] = field(default_factory=dict)
    checkpoint: Checkpoint | None = None
    """The modules' state and queues at the same cut (docs/design/004-checkpoints.md)."""

    def __bool__(self) -> bool:
        return bool(
            self.records or self.counters or self.quarantined or self.module_state or self.health
            or self.checkpoint
        )


def as_jsonl(records: Iterable[OutboxRecord]) -> Iterator[str]:
    for record in records:
        yield codec.dumps(record.as_dict())
