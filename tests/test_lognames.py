import importlib.util

import pytest

from agent.health.lognames import RENAMED, current_names


@pytest.mark.parametrize(("old", "new"), sorted(RENAMED.items()))
def test_each_old_logger_name_leads_to_a_module_that_exists(old: str, new: str):
    assert importlib.util.find_spec(new) is not None, new
    assert current_names(old) == [old, new]


def test_names_that_did_not_move_mean_themselves():
    assert current_names("agent.modules.win") == ["agent.modules.win"]
    assert current_names(None) == [None]
