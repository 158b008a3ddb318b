"""`edge-agent outbox` prints each record's time for people without the C library's gmtime:
32-bit ARM's time_t (Raspberry Pi OS armhf) ends in January 2038, and replay takes any time."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from agent.cli.main import main
from agent.outbox import Changes, Outbox

END_OF_32BIT_TIME = 2**31  # 2038-01-19T03:14:08Z, one second past a signed 32-bit time_t


def only_32bit_time(real: Callable[[float | None], time.struct_time]) -> Callable[..., time.struct_time]:
    def call(seconds: float | None = None) -> time.struct_time:
        if seconds is not None and not -(2**31) <= seconds < END_OF_32BIT_TIME:
            raise OverflowError("timestamp out of range for platform time_t")
        return real(seconds)
    return call


def test_record_times_past_2038_and_beyond_year_9999(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    box = Outbox.open(tmp_path / "data")
    stamps = [1_700_000_000.25, END_OF_32BIT_TIME + 0.5, 4_102_444_800.0, 1e12]
    box.commit(Changes(records=[("s", ts, {"n": n}) for n, ts in enumerate(stamps)]))
    box.close()
    config = tmp_path / "agent.toml"
    config.write_text(f'device_id = "gw"\ndata_dir = "{tmp_path / "data"}"\n'
                      '[[sources]]\nname = "sim"\ntype = "simulator"\n')
    # as on armhf: the C library's calls refuse the times past 2038
    monkeypatch.setattr(time, "gmtime", only_32bit_time(time.gmtime))
    monkeypatch.setattr(time, "localtime", only_32bit_time(time.localtime))

    result = CliRunner().invoke(main, ["outbox", "-c", str(config)])

    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert [(line["ts"], line["time"]) for line in lines] == [
        (1_700_000_000.25, "2023-11-14T22:13:20.250Z"),
        (END_OF_32BIT_TIME + 0.5, "2038-01-19T03:14:08.500Z"),
        (4_102_444_800.0, "2100-01-01T00:00:00.000Z"),
        (1e12, None),  # the year 33658: no ISO 8601 year for it, the number stays
    ]
