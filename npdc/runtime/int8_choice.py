"""Which convs of an int8 plan run their GEMM over the non-zero weight words only
(npdc.kernels.int8_sparse) instead of the dense VNNI GEMM.

A conv over words whose taps are read at offsets, with at most CANDIDATE of its packed weight
words not zero, is a candidate; "measure" keeps it where the sparse GEMM measured faster at the
plan's batch (both called in turns on the runtime's own arena and workspace, best of the
rounds), as npdc.runtime.program chooses the float runtime's kernels. Why measure: the sparse
GEMM loads one input vector per vpdpbusd where the dense one loads one per four, so it pays
only well below half density, by how much depending on the tile's width (docs/perf.md,
branch `i8s`). Both compute the same integer sums, so the choice moves time, never bits, and it
is not cached on disk.
"""

from npdc.engine.conv_select import best_in_turns
from npdc.kernels.int8_sparse import sparse_entries, word_density

CANDIDATE = 0.6  # word density above which the sparse GEMM is not tried
CHOICES = ("measure", "always", "never")  # "always": every candidate, for tests and comparisons
ROUNDS = 5  # timed calls of each GEMM per candidate, after one untimed


def candidate(rt, s):
    """Whether conv s could run the sparse GEMM (conv_words with taps, few non-zero words)."""
    if s.kind != "conv":
        return False
    q = rt.q[s.name]
    return q.taps and rt.runs_words(s) and word_density(q.w) <= CANDIDATE


def sparse_choice(rt, how="measure"):
    """{conv name: (rowptr, offsets, words)} of the convs of runtime rt that run the sparse GEMM."""
    if how not in CHOICES:
        raise ValueError(f"int8 sparse choice {how!r}: one of {', '.join(CHOICES)}")
    chosen = {}
    for s in rt.plan.steps:
        if how == "never" or not candidate(rt, s):
            continue
        q = rt.q[s.name]
        entries = sparse_entries(q.w, q.k4, rt.tap_offsets(s))
        if how == "measure":
            B = rt.plan.batch
            t = best_in_turns({"dense": rt.conv_call(s, B, rt.dense_entries), "sparse": rt.conv_call(s, B, entries)},
                              ROUNDS)
            if t["sparse"] >= t["dense"]:
                continue
        chosen[s.name] = entries
    return chosen
