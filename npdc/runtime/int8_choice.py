"""Which kernel each conv and linear step of an int8 plan runs: the dense VNNI GEMM of conv_words
(linear_u8), its GEMM over the non-zero weight words only (npdc.kernels.int8_sparse), or output
channels in the lanes (npdc.kernels.int8_blocked).

A conv over words whose taps are read at offsets, or a linear layer, with at most CANDIDATE of
its packed weight words not zero, may run sparse; a conv whose input is kept as words, or a
linear layer, whose output channels are whole register blocks may run blocked. "measure" keeps,
per step, whichever of its kernels measured fastest at the plan's batch (all called in turns
on the runtime's own arena and workspace, best of the rounds), as npdc.runtime.program chooses
the float runtime's kernels.
Why measure: the sparse GEMM loads one input vector per vpdpbusd where the dense one loads one
per four, so it pays only well below half density, by how much depending on the tile's width
(docs/perf.md, branch `i8s`); the blocked conv pays where a plane's padded rows leave lanes of
the dense GEMM idle (4 x 4, 7 x 7), not on wide planes, where it moves more sums. "always" runs
a kernel wherever it may (blocked before sparse), "never" nowhere; for tests and comparisons.
Every kernel computes the same integer sums, so the choice moves time, never bits, and it is
not cached on disk.
"""

from npdc.engine.conv_select import best_in_turns
from npdc.kernels.int8_blocked import blocked_fits, blocked_weights, linear_fits
from npdc.kernels.int8_sparse import linear_entries, sparse_entries, word_density

CANDIDATE = 0.6  # word density above which the sparse GEMM is not tried
CHOICES = ("measure", "always", "never")
ROUNDS = 5  # timed calls of each kernel per conv, after one untimed


def candidate(rt, s):
    """Whether step s could run its GEMM over the non-zero words: few of them, and a conv_words
    conv with taps or a linear layer of whole input words."""
    if s.kind not in ("conv", "linear"):
        return False
    q = rt.q[s.name]
    if s.kind == "linear":
        return whole_words(rt, s) and word_density(q.w) <= CANDIDATE
    return q.taps and rt.runs_words(s) and word_density(q.w) <= CANDIDATE


def whole_words(rt, s):
    """Whether a linear step's input rows are whole words (features a multiple of 4): its
    sparse and blocked kernels read them in place as words."""
    return 4 * rt.q[s.name].k4 == rt.plan.values[s.inputs[0]].size


def blocked_candidate(rt, s):
    """Whether step s could run with output channels in the lanes: a conv whose input is kept as
    words, or a linear layer, its output channels whole register blocks."""
    if s.kind == "linear":
        return whole_words(rt, s) and linear_fits(4 * rt.q[s.name].k4, rt.q[s.name].bias.size)
    if s.kind != "conv" or not rt.q[s.name].taps or s.inputs[0] not in rt.pads:
        return False
    return blocked_fits(rt.geometry(s), rt.q[s.name].bias.size)


def kernel_choice(rt, sparse="measure", blocked="measure"):
    """({step: (rowptr, offsets, words)} of the convs and linears of runtime rt that run over the
    non-zero words, {step: blocked weights} of those that run with output channels in the lanes)."""
    for how in (sparse, blocked):
        if how not in CHOICES:
            raise ValueError(f"int8 kernel choice {how!r}: one of {', '.join(CHOICES)}")
    entries, lanes = {}, {}
    for s in rt.plan.steps:
        options = {}
        if blocked != "never" and blocked_candidate(rt, s):
            options["blocked"] = blocked
        if sparse != "never" and candidate(rt, s):
            options["sparse"] = sparse
        if not options:
            continue
        q = rt.q[s.name]
        made = {"blocked": lambda: blocked_weights(q.w, q.k4),
                "sparse": lambda: (linear_entries(q.w, q.k4, rt.plan.batch) if s.kind == "linear"
                                   else sparse_entries(q.w, q.k4, rt.tap_offsets(s)))}
        forced = [k for k, how in options.items() if how == "always"]
        if forced:
            pick, arrays = forced[0], made[forced[0]]()
        else:
            arrays = {k: made[k]() for k in options}
            call = rt.linear_call if s.kind == "linear" else rt.conv_call
            calls = {"dense": call(s, rt.plan.batch)}
            calls.update({k: call(s, rt.plan.batch, **{k: a}) for k, a in arrays.items()})
            t = best_in_turns(calls, ROUNDS)
            pick = min(t, key=t.get)
            if pick == "dense":
                continue
            arrays = arrays[pick]
        (lanes if pick == "blocked" else entries)[s.name] = arrays
    return entries, lanes
