"""The modules' checkpoint in the outbox: an append-only log folded now and then into a keyed
table (agent/outbox/checkpoint.py). What is read back is always what was written last."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from agent.outbox import Changes, Outbox
from agent.outbox import checkpoint as checkpoints
from agent.outbox.checkpoint import Checkpoint
from agent.outbox.schema import transaction


def commit(outbox: Outbox, changed: dict[str, dict[str, Any]], resets: tuple[str, ...] = ()) -> None:
    checkpoint = Checkpoint()
    for module in resets:
        checkpoint.reset(module)
    for module, items in changed.items():
        checkpoint.add(module, items)
    outbox.commit(Changes(checkpoint=checkpoint))


def rows(outbox: Outbox, table: str) -> int:
    count: int = outbox._conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    return count


def test_later_values_win_and_forgotten_keys_are_gone(tmp_path: Path) -> None:
    outbox = Outbox.open(tmp_path)
    commit(outbox, {"win": {"a": [1], "b": {"x": 1.5}}, "other": {"a": 2}})
    commit(outbox, {"win": {"a": [3], "b": None}})
    assert outbox.checkpoint()[0] == {"win": {"a": [3]}, "other": {"a": 2}}
    commit(outbox, {"other": {"a": None}})
    assert outbox.checkpoint()[0] == {"win": {"a": [3]}}
    outbox.close()
    assert Outbox.open(tmp_path).checkpoint()[0] == {"win": {"a": [3]}}  # after a restart


def test_a_reset_forgets_the_module_in_the_log_and_the_folded_table(tmp_path: Path) -> None:
    outbox = Outbox.open(tmp_path)
    commit(outbox, {"win": {"a": 1, "b": 2}})
    with transaction(outbox._conn) as conn:
        checkpoints.fold(conn)
    assert rows(outbox, "checkpoint_log") == 0 and rows(outbox, "checkpoint") == 2
    commit(outbox, {"win": {"c": 3}})
    commit(outbox, {"win": {"d": 4}}, resets=("win",))  # reset first, then the new keys
    assert outbox.checkpoint()[0] == {"win": {"d": 4}}


def test_the_log_is_folded_once_it_grows_and_the_state_is_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(checkpoints, "FOLD_MIN", 50)
    outbox = Outbox.open(tmp_path)
    rng = random.Random(7)
    model: dict[str, dict[str, Any]] = {}
    folds = 0
    for _ in range(300):
        module = rng.choice(["win", "join"])
        changed: dict[str, Any] = {}
        for _ in range(rng.randrange(1, 8)):
            key = f"s{rng.randrange(40)}"
            changed[key] = None if rng.random() < 0.2 else {"n": rng.randrange(1000)}
        before = rows(outbox, "checkpoint_log")
        commit(outbox, {module: changed})
        folds += rows(outbox, "checkpoint_log") < before
        for key, value in changed.items():
            if value is None:
                model.get(module, {}).pop(key, None)
            else:
                model.setdefault(module, {})[key] = value
        model = {m: items for m, items in model.items() if items}
        assert outbox.checkpoint()[0] == model
    assert folds >= 3 and rows(outbox, "checkpoint_log") < 50
    outbox.close()
    assert Outbox.open(tmp_path).checkpoint()[0] == model
