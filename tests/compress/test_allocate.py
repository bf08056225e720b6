"""The allocation of per-layer levels against brute force over every combination."""

import itertools

import numpy as np
import pytest

from npdc.compress.allocate import allocate, cheapest, drop_units
from npdc.errors import UserError


def brute_force(curves, sizes, budget):
    names = list(curves)
    best = None
    for combo in itertools.product(*(range(len(curves[n][0])) for n in names)):
        drop = sum(int(curves[n][1][j]) for n, j in zip(names, combo))
        if drop > budget:
            continue
        gain = sum(curves[n][0][j] * sizes[n] for n, j in zip(names, combo))
        if best is None or gain > best[0] + 1e-9:
            best = (gain, drop)
    return best


def gain_and_drop(curves, sizes, chosen):
    return (sum(curves[n][0][j] * sizes[n] for n, j in chosen.items()),
            sum(int(curves[n][1][j]) for n, j in chosen.items()))


@pytest.mark.parametrize("seed", range(40))
def test_the_allocation_is_the_brute_force_optimum(seed):
    rng = np.random.default_rng(seed)
    levels = np.array([0.0, 0.3, 0.5, 0.7, 0.8, 0.9])
    curves, sizes = {}, {}
    for i in range(int(rng.integers(1, 5))):
        raw = np.cumsum(rng.integers(0, 6, levels.size)) * (levels > 0)
        curves[f"l{i}"] = (levels, raw)
        sizes[f"l{i}"] = int(rng.integers(10, 5000))
    budget = int(rng.integers(0, 20))
    chosen = allocate(curves, sizes, budget)
    gain, drop = gain_and_drop(curves, sizes, chosen)
    best_gain, _ = brute_force(curves, sizes, budget)
    assert drop <= budget and gain == pytest.approx(best_gain)


def test_a_case_worked_by_hand():
    """Budget 3: pruning the big layer to 0.8 costs 3 and removes 800; the small layer's 0.9
    costs 1 and removes 90, so 0.5 on the big one (cost 2, 500) plus 0.9 on the small one loses."""
    curves = {"big": (np.array([0.0, 0.5, 0.8]), np.array([0, 2, 3])),
              "small": (np.array([0.0, 0.9]), np.array([0, 1]))}
    chosen = allocate(curves, {"big": 1000, "small": 100}, 3)
    assert chosen == {"big": 2, "small": 0}
    assert allocate(curves, {"big": 1000, "small": 100}, 0) == {"big": 0, "small": 0}
    assert allocate(curves, {"big": 1000, "small": 100}, 4) == {"big": 2, "small": 1}


def test_the_lower_level_wins_a_tie():
    curves = {"a": (np.array([0.0, 0.0, 0.5]), np.array([0, 0, 9]))}
    assert allocate(curves, {"a": 10}, 5) == {"a": 0}


def test_drop_units_round_to_images_and_never_fall():
    units = drop_units([0.95, 0.951, 0.94, 0.945, 0.90], baseline=0.95, images=1000)
    assert units.tolist() == [0, 0, 10, 10, 50]


def test_bad_curves_and_budgets_are_user_errors():
    with pytest.raises(UserError, match="budget"):
        allocate({"a": (np.array([0.0]), np.array([0]))}, {"a": 1}, -1)
    with pytest.raises(UserError, match="as many drops"):
        allocate({"a": (np.array([0.0, 0.5]), np.array([0]))}, {"a": 1}, 1)
    with pytest.raises(UserError, match="no level"):
        allocate({"a": (np.array([0.5]), np.array([3]))}, {"a": 1}, 1)


@pytest.mark.parametrize("seed", range(30))
def test_cheapest_reaches_each_gain_at_the_brute_force_least_drop(seed):
    rng = np.random.default_rng(100 + seed)
    levels = np.array([0.0, 0.3, 0.5, 0.7, 0.9])
    curves = {f"l{i}": (levels, np.cumsum(rng.integers(0, 5, levels.size)) * (levels > 0))
              for i in range(int(rng.integers(1, 4)))}
    sizes = {n: int(rng.integers(10, 3000)) for n in curves}
    total = sum(sizes.values())
    wants = [0.0, 0.2 * total, 0.5 * total, 0.8 * total, 0.95 * total]
    for want, chosen in zip(wants, cheapest(curves, sizes, wants)):
        combos = [dict(zip(curves, c)) for c in itertools.product(range(levels.size), repeat=len(curves))]
        reaching = [gain_and_drop(curves, sizes, c)[1] for c in combos
                    if gain_and_drop(curves, sizes, c)[0] >= want - 1e-9]
        if not reaching:
            assert chosen is None
            continue
        gain, drop = gain_and_drop(curves, sizes, chosen)
        assert gain >= want - 1e-9 and drop == min(reaching)
