"""Per-layer choice of convolution primitive (Anderson & Gregg 2017, "Optimal DNN Primitive
Selection with Partitioned Boolean Quadratic Programming").

Each legal primitive is timed once per layer shape (forward, plus both backwards when training)
and the times are cached on disk, keyed by shape, dtype, thread count, CPU and a digest of the
kernels' source (so a changed kernel is timed again), in a JSON file
under $NPDC_CACHE_DIR or ~/.cache/npdc/ replaced atomically. The choice is then a PBQP: a cost
vector per layer (its primitives' times) and a cost matrix per edge between neighbouring layers
(the time to convert the tensor between the two primitives' layouts). Along a chain it is solved
exactly by dynamic programming; on a DAG (residual forks) by the PBQP reductions R0, RI and RII,
which are exact, and by branching on a node's choices where no reduction applies (also exact, but
exponential in the number of branchings; edges whose cost does not couple the two choices, such
as same-layout neighbours, are folded into the nodes first, so today's all-NCHW plans never branch).
"""

import json
import os
import platform
import time
from pathlib import Path

import numba
import numpy as np

from npdc.atomic import write_text
from npdc.kernels.cache_stamp import kernels_digest
from npdc.kernels.conv import PRIMITIVES, conv2d_backward, conv2d_forward, legal_primitives

CACHE_NAME = "conv_timings.json"


def cache_file():
    """Where timings are kept: $NPDC_CACHE_DIR/conv_timings.json or ~/.cache/npdc/."""
    root = os.environ.get("NPDC_CACHE_DIR") or Path.home() / ".cache" / "npdc"
    return Path(root) / CACHE_NAME


def cpu_name():
    """A label for the processor, so timings from another machine are not reused."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def shape_key(x_shape, W_shape, stride, pad, groups, dtype, mode):
    """The cache key of one layer's timings."""
    return (f"x{'x'.join(map(str, x_shape))}-w{'x'.join(map(str, W_shape))}-s{stride}-p{pad}"
            f"-g{groups}-{np.dtype(dtype).name}-t{numba.get_num_threads()}-{mode}-{cpu_name()}"
            f"-k{kernels_digest()}")


def _load(path):
    try:
        with open(path) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def best_seconds(fn, repeats=5, warmup=1):
    """Fastest of `repeats` timed calls after `warmup` untimed ones (which compile and touch
    memory)."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def best_in_turns(calls, rounds):
    """{key: best seconds} of the calls {key: call}, each called once untimed (it compiles and
    touches memory), then once per round in turn, the order turning each round: a spell of load
    from other processes slows every call alike rather than the one timed during it."""
    keys, best = list(calls), dict.fromkeys(calls, float("inf"))
    for key in keys:
        calls[key]()
    for r in range(rounds if keys else 0):
        for key in keys[r % len(keys):] + keys[:r % len(keys)]:
            t = time.perf_counter()
            calls[key]()
            best[key] = min(best[key], time.perf_counter() - t)
    return best


def time_primitive(name, x, W, stride, pad, groups, mode="train", repeats=2):
    """Seconds for one forward (mode 'infer') or forward + both backwards ('train'), best of
    `repeats` after one untimed call that compiles and touches memory. In training the weights
    change every step, so a 'train' run neither keeps nor reuses transformed weights."""
    def run():
        y = conv2d_forward(x, W, stride, pad, groups, primitive=name, keep=mode != "train")
        if mode == "train":
            conv2d_backward(x, W, y, stride, pad, groups, primitive=name)
    return best_seconds(run, repeats)


def layer_timings(x_shape, W_shape, stride, pad, groups, dtype=np.float32, mode="train",
                  cache=True):
    """{primitive: seconds} for every legal primitive of this layer, from the cache or measured."""
    key = shape_key(x_shape, W_shape, stride, pad, groups, dtype, mode)
    path = cache_file()
    data = _load(path) if cache else {}
    if key in data and set(data[key]) == set(legal_primitives(x_shape, W_shape, stride, pad, groups)):
        return data[key]
    rng = np.random.default_rng(0)
    x = rng.standard_normal(x_shape).astype(dtype)
    W = rng.standard_normal(W_shape).astype(dtype)
    times = {name: time_primitive(name, x, W, stride, pad, groups, mode)
             for name in legal_primitives(x_shape, W_shape, stride, pad, groups)}
    if cache:
        data = _load(path)  # another process may have written meanwhile
        data[key] = times
        write_text(path, json.dumps(data, indent=1, sort_keys=True))
    return times


def layout_cost(shape, src, dst, dtype=np.float32):
    """Seconds to convert a tensor of `shape` from layout `src` to `dst` (0 when equal)."""
    if src == dst:
        return 0.0
    a = np.zeros(shape, dtype)
    order = (0, 2, 3, 1) if src == "NCHW" else (0, 3, 1, 2)
    t0 = time.perf_counter()
    np.ascontiguousarray(a.transpose(order))
    return time.perf_counter() - t0


# -- exact solvers -------------------------------------------------------------------------------
def solve_chain(node_costs, edge_costs):
    """Minimum of sum_i c_i[s_i] + sum_i E_i[s_i, s_i+1] along a chain (Viterbi DP).
    node_costs: list of 1-D arrays; edge_costs: list of len-1 matrices. Returns (choices, cost)."""
    best = np.asarray(node_costs[0], float)
    back = []
    for c, E in zip(node_costs[1:], edge_costs):
        total = best[:, None] + np.asarray(E, float)
        back.append(np.argmin(total, axis=0))
        best = total.min(axis=0) + np.asarray(c, float)
    choice = [int(np.argmin(best))]
    for b in reversed(back):
        choice.append(int(b[choice[-1]]))
    return choice[::-1], float(best.min())


def solve_pbqp(node_costs, edge_costs):
    """Exact minimiser of sum_u c_u[s_u] + sum_(u,v) E_uv[s_u, s_v] on any graph.
    node_costs: {u: 1-D array}; edge_costs: {(u, v): matrix (len c_u, len c_v)}. Returns
    ({u: choice}, cost)."""
    costs = {u: np.asarray(c, float).copy() for u, c in node_costs.items()}
    edges = {}
    for (u, v), E in edge_costs.items():
        _add_edge_or_fold(costs, edges, u, v, np.asarray(E, float))
    choice = _reduce(costs, edges)
    total = sum(costs_u[choice[u]] for u, costs_u in
                ((u, np.asarray(c, float)) for u, c in node_costs.items()))
    total += sum(float(np.asarray(E)[choice[u], choice[v]]) for (u, v), E in edge_costs.items())
    return choice, float(total)


def _add_edge(edges, u, v, E):
    if u == v:
        raise ValueError("PBQP: an edge joins a node to itself")
    edges.setdefault(u, {})
    edges.setdefault(v, {})
    if v in edges[u]:
        E = edges[u][v] + E
    edges[u][v] = E
    edges[v][u] = E.T


def _add_edge_or_fold(costs, edges, u, v, E):
    """An edge whose matrix is a[i] + b[j] couples nothing: fold a into u, b into v (exact).
    Same-layout neighbours give all-zero matrices, so most edges vanish here."""
    a, b = E[:, 0], E[0, :] - E[0, 0]
    if np.allclose(E, a[:, None] + b[None, :], rtol=0, atol=1e-15):
        costs[u] = costs[u] + a
        costs[v] = costs[v] + b
    else:
        _add_edge(edges, u, v, E)


def _remove(edges, u):
    for v in edges.pop(u, {}):
        del edges[v][u]


def _reduce(costs, edges):
    """Apply R0 / RI / RII until no node is left, branching where none applies; back-substitute."""
    for u in costs:
        edges.setdefault(u, {})
    stack = []
    alive = set(costs)
    while alive:
        u = min(alive, key=lambda n: (len(edges[n]), str(n)))
        nbrs = list(edges[u])
        if len(nbrs) > 2:
            return _branch(costs, edges, alive, stack, u)
        stack.append((u, nbrs, [edges[u][v] for v in nbrs], costs[u]))
        if len(nbrs) == 1:
            (v,), (E,) = nbrs, [edges[u][nbrs[0]]]
            costs[v] = costs[v] + (costs[u][:, None] + E).min(axis=0)
        elif len(nbrs) == 2:
            v, w = nbrs
            Ev, Ew = edges[u][v], edges[u][w]
            joint = (costs[u][:, None, None] + Ev[:, :, None] + Ew[:, None, :]).min(axis=0)
            _remove(edges, u)
            _add_edge_or_fold(costs, edges, v, w, joint)
            alive.discard(u)
            continue
        _remove(edges, u)
        alive.discard(u)
    return _back_substitute(stack, {})


def _back_substitute(stack, choice):
    for u, nbrs, Es, c in reversed(stack):
        total = c.copy()
        for v, E in zip(nbrs, Es):
            total = total + E[:, choice[v]]
        choice[u] = int(np.argmin(total))
    return choice


def _branch(costs, edges, alive, stack, u):
    """Try every choice of u (exact); the rest is solved recursively on copies."""
    best, best_choice = float("inf"), None
    for i in range(len(costs[u])):
        sub_costs = {v: costs[v].copy() for v in alive if v != u}
        sub_edges = {}
        for v in alive:
            for w, E in edges[v].items():
                if v != u and w != u and str(v) < str(w):
                    _add_edge(sub_edges, v, w, E)
        for v, E in edges[u].items():
            sub_costs[v] = sub_costs[v] + E[i]
        ch = _reduce(sub_costs, sub_edges) if sub_costs else {}
        total = costs[u][i] + sum(costs[v][ch[v]] for v in sub_costs)
        total += sum(edges[u][v][i, ch[v]] for v in edges[u])
        seen = set()
        for v in sub_costs:
            for w in edges[v]:
                if w != u and w in sub_costs and (w, v) not in seen:
                    seen.add((v, w))
                    total += edges[v][w][ch[v], ch[w]]
        if total < best:
            best, best_choice = total, {**ch, u: i}
    return _back_substitute(stack, best_choice)


def primitive_names():
    """The registry's names, for argument parsers and messages."""
    return list(PRIMITIVES)
