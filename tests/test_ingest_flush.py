"""The ingest's flushes: a backlog of many small messages (a fleet of devices, a worker that fell
behind) is written in bounded transactions, each followed by its acks, never all in one."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from agent.config import BrokerLogin
from cloud_sync.protocol import Encoder
from cloud_sync.server.ingest import Ingest
from cloud_sync.server.store import open_store

DEVICES = 150


@pytest.mark.parametrize(
    ("bounds", "expected"),
    [
        ({"flush_max_messages": 40}, [40, 40, 40, 30]),
        ({"flush_bytes": 1}, [1] * DEVICES),  # every message over the byte bound on its own
    ],
)
async def test_a_backlog_of_small_messages_is_written_in_bounded_flushes(
    tmp_path: Path, bounds: dict[str, int], expected: list[int]
) -> None:
    store = open_store(f"sqlite:///{tmp_path}/cloud.db")
    ingest = Ingest(store, BrokerLogin(url="mqtt://127.0.0.1:1"), **bounds)  # no broker: fed directly
    flushes: list[int] = []
    ingest.subscribe(lambda flush, states: flushes.append(flush.counters.get("messages", 0)))
    for i in range(DEVICES):
        device = f"gw-{i:03d}"
        rows = [(seq, "win", 1.0, '{"sensor":"t","count":1}') for seq in (1, 2, 3)]
        ingest.feed(f"edge/{device}/data", Encoder(device, "e1", "zlib").encode(rows, 0))
    flusher = asyncio.create_task(ingest._flush_loop())
    deadline = time.monotonic() + 60
    while ingest.stats.records < 3 * DEVICES and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    ingest.stop()
    await flusher
    assert flushes == expected
    assert len(store.devices()) == DEVICES and ingest.stats.records == 3 * DEVICES
    store.close()
