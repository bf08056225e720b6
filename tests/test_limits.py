"""The allocation budget every file reader takes from (npdc.limits)."""

import pytest

from npdc.errors import UserError
from npdc.limits import Budget, allowance


def test_the_allowance_grows_with_the_file_between_a_floor_and_a_cap(monkeypatch):
    monkeypatch.setenv("NPDC_ALLOC_FLOOR", "1000")
    monkeypatch.setenv("NPDC_ALLOC_RATIO", "10")
    monkeypatch.setenv("NPDC_ALLOC_CAP", "50000")
    assert allowance(0) == 1000 and allowance(50) == 1000
    assert allowance(300) == 3000
    assert allowance(10 ** 9) == 50000


def test_a_budget_refuses_in_one_line_naming_the_file_and_the_variables(monkeypatch):
    monkeypatch.setenv("NPDC_ALLOC_FLOOR", "100")
    monkeypatch.setenv("NPDC_ALLOC_RATIO", "1")
    budget = Budget("model.npdc", 10)
    budget.take(60, "layer a")
    budget.take(40, "layer b")
    with pytest.raises(UserError) as e:
        budget.take(1, "layer c")
    message = str(e.value)
    assert "model.npdc" in message and "layer c" in message and "NPDC_ALLOC_RATIO" in message
    assert "\n" not in message
    with pytest.raises(UserError, match="negative"):
        Budget("x", 10).take(-1, "a shape")


@pytest.mark.parametrize("value", ["abc", "0", "-5"])
def test_a_bad_setting_is_a_user_error(monkeypatch, value):
    monkeypatch.setenv("NPDC_ALLOC_RATIO", value)
    with pytest.raises(UserError, match="NPDC_ALLOC_RATIO"):
        allowance(10)


def test_the_defaults_hold_real_files_and_keep_small_files_small(monkeypatch):
    for name in ("NPDC_ALLOC_FLOOR", "NPDC_ALLOC_RATIO", "NPDC_ALLOC_CAP"):
        monkeypatch.delenv(name, raising=False)
    assert allowance(2 << 20) <= 256 << 20  # a 2 MB hostile file stays under 256 MB
    assert allowance(152_459) >= 50 * 152_459  # the full preset's file decodes to 46x its size
    assert allowance(200 << 20) >= 4 * (200 << 20)
