"""Tests for npdc.engine.conv_select: exact solvers against brute force, the on-disk timing cache."""

import itertools
import json

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from npdc.engine import conv_select as select
from npdc.kernels.conv import legal_primitives


def _brute(node_costs, edge_costs):
    names = list(node_costs)
    best = float("inf")
    for combo in itertools.product(*(range(len(node_costs[n])) for n in names)):
        s = dict(zip(names, combo))
        total = sum(node_costs[n][s[n]] for n in names)
        total += sum(E[s[u], s[v]] for (u, v), E in edge_costs.items())
        best = min(best, total)
    return best


@st.composite
def graphs(draw, chain=False):
    n = draw(st.integers(1, 6))
    sizes = [draw(st.integers(1, 3)) for _ in range(n)]
    r = np.random.default_rng(draw(st.integers(0, 2**16)))
    nodes = {i: r.random(sizes[i]) for i in range(n)}
    pairs = [(i, i + 1) for i in range(n - 1)] if chain else \
        [p for p in itertools.combinations(range(n), 2) if draw(st.booleans())]
    edges = {(u, v): r.random((sizes[u], sizes[v])) for u, v in pairs}
    return nodes, edges


@settings(max_examples=60, deadline=None)
@given(g=graphs(chain=True))
def test_chain_dp_is_optimal(g):
    nodes, edges = g
    n = len(nodes)
    choice, cost = select.solve_chain([nodes[i] for i in range(n)], [edges[(i, i + 1)] for i in range(n - 1)])
    assert abs(cost - _brute(nodes, edges)) < 1e-9
    again = sum(nodes[i][choice[i]] for i in range(n)) + \
        sum(edges[(i, i + 1)][choice[i], choice[i + 1]] for i in range(n - 1))
    assert abs(again - cost) < 1e-9


@settings(max_examples=80, deadline=None)
@given(g=graphs())
def test_pbqp_is_optimal_on_any_graph(g):
    """Including dense graphs where no reduction applies and the solver must branch."""
    nodes, edges = g
    choice, cost = select.solve_pbqp(nodes, edges)
    assert set(choice) == set(nodes)
    assert abs(cost - _brute(nodes, edges)) < 1e-9


def test_layout_cost_is_zero_for_same_layout():
    assert select.layout_cost((2, 3, 4, 4), "NCHW", "NCHW") == 0.0
    assert select.layout_cost((2, 3, 4, 4), "NCHW", "NHWC") > 0.0


def test_timings_are_cached_by_key(tmp_path, monkeypatch):
    """The first call measures every legal primitive and writes the JSON; the second reads it."""
    monkeypatch.setenv("NPDC_CACHE_DIR", str(tmp_path))
    case = ((2, 3, 6, 6), (4, 3, 3, 3), 1, 1, 1)
    first = select.layer_timings(*case, mode="infer")
    assert set(first) == set(legal_primitives(*case)) and all(t > 0 for t in first.values())
    data = json.loads((tmp_path / "conv_timings.json").read_text())
    key = select.shape_key(*case, np.float32, "infer")
    assert data[key] == first
    data[key] = {name: 1.0 + i for i, name in enumerate(first)}  # a cached answer is reused
    (tmp_path / "conv_timings.json").write_text(json.dumps(data))
    assert select.layer_timings(*case, mode="infer") == data[key]
    assert list(tmp_path.iterdir()) == [tmp_path / "conv_timings.json"]  # no temporary left


def test_timings_of_other_kernel_sources_are_not_reused(tmp_path, monkeypatch):
    """The key carries a digest of the kernels' source: after a kernel changes, its layers are
    timed again instead of being planned from the old code's times."""
    monkeypatch.setenv("NPDC_CACHE_DIR", str(tmp_path))
    case = ((2, 3, 6, 6), (4, 3, 3, 3), 1, 1, 1)
    key = select.shape_key(*case, np.float32, "infer")
    assert select.kernels_digest() in key
    old = key.replace(select.kernels_digest(), "000000000000")
    stale = {name: 1.0 + i for i, name in enumerate(legal_primitives(*case))}
    (tmp_path / "conv_timings.json").write_text(json.dumps({old: stale}))
    fresh = select.layer_timings(*case, mode="infer")
    assert fresh != stale and set(fresh) == set(stale)
    assert set(json.loads((tmp_path / "conv_timings.json").read_text())) == {old, key}

