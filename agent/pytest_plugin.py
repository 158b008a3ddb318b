"""The ``harness`` pytest fixture, registered through the ``pytest11`` entry point so a module
writer's tests can use it without any set-up."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from agent.api import Module
from agent.testing import Harness, module_harness


@pytest.fixture
def harness() -> Iterator[Callable[..., Harness]]:
    """``harness(Module_or_name, **config)``: a started ``module_harness``, closed after the test."""
    made: list[Harness] = []

    def make(module: str | type[Module[Any]], *args: Any, **kwargs: Any) -> Harness:
        made.append(module_harness(module, *args, **kwargs))
        return made[-1]

    yield make
    for item in made:
        item.close()
