"""The retained memory noted a batch at a time remembers what noting each message would."""

from __future__ import annotations

import pytest

from agent.sources import retained
from agent.sources.retained import RetainedMemory


@pytest.mark.parametrize(
    "batch",
    [
        {"a": b'{"value": 1}', "b": b'{"value": 2}'},
        {"a": b"x" * 300, "b": b'{"value": 2}'},  # a long payload is kept as its CRC-32
        {"a": b""},
    ],
)
def test_a_batch_is_noted_as_each_of_its_messages(batch: dict[str, bytes]) -> None:
    one_by_one, at_once = RetainedMemory(), RetainedMemory()
    for topic, payload in batch.items():
        one_by_one.note(topic, payload)
    at_once.note_all(batch)
    for topic, payload in batch.items():
        assert at_once.repeat(topic, payload)
        assert not at_once.repeat(topic, payload + b" ")
    assert at_once.cut() == one_by_one.cut()


def test_a_batch_beyond_the_topics_remembered_notes_only_those_with_room(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(retained, "MAX_TOPICS", 2)
    memory = RetainedMemory()
    memory.note("a", b"1")
    memory.note_all({"a": b"2", "b": b"3", "c": b"4"})
    assert memory.repeat("a", b"2") and memory.repeat("b", b"3")
    assert not memory.repeat("c", b"4")
