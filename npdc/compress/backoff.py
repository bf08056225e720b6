"""Back-off: the most aggressive of an ordered list of candidates that still passes a check.

Candidates 0..n-1 go from gentle to aggressive (for example, total drop budgets handed to
npdc.compress.allocate); `passes` is assumed to hold for a prefix of them: what a candidate
costs in accuracy grows with its aggressiveness. Each round measures `width` candidates spread
evenly over the interval still in doubt (width 1 is bisection), through one call of `measure`
with the round's list of independent jobs, so that the jobs of a round can run side by side. A
real evaluation is noisy and may break the assumption; the answer is then still a candidate that
was measured and passed, never one that was only inferred.
"""

from dataclasses import dataclass, field


@dataclass
class Backoff:
    """The search's state: the best candidate measured to pass, and every measurement made."""
    best: int | None = None
    tried: list = field(default_factory=list)  # (candidate, result, passed) in measuring order


def _spread(lo, hi, width):
    """Up to `width` distinct candidates evenly inside lo..hi (both included)."""
    count = hi - lo + 1
    if count <= width:
        return list(range(lo, hi + 1))
    return sorted({lo + (k + 1) * count // (width + 1) for k in range(width)})


def search(n, measure, passes, width=1, rounds=None, start=None):
    """Search candidates 0..n-1. measure(list of candidates) -> list of results in the same
    order; passes(result) -> bool. `rounds` caps the rounds; `start` (a Backoff) resumes a
    search whose measurements are already known. Returns the Backoff."""
    state = start if start is not None else Backoff()
    known = {c: ok for c, _, ok in state.tried}
    lo, hi = 0, n - 1
    for c, ok in known.items():  # what earlier rounds settled
        if ok:
            lo = max(lo, c + 1)
        else:
            hi = min(hi, c - 1)
    done = 0
    while lo <= hi and (rounds is None or done < rounds):
        batch = [c for c in _spread(lo, hi, max(1, width)) if c not in known]
        results = measure(batch) if batch else []
        if len(results) != len(batch):
            raise ValueError(f"measure returned {len(results)} results for {len(batch)} candidates")
        for c, result in zip(batch, results):
            known[c] = passes(result)
            state.tried.append((c, result, known[c]))
        for c in _spread(lo, hi, max(1, width)):
            if known[c]:
                lo = max(lo, c + 1)
            else:
                hi = min(hi, c - 1)
                break
        done += 1
    passing = [c for c, ok in known.items() if ok]
    state.best = max(passing) if passing else None
    return state
