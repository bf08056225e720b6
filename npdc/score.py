"""The competition score: ((M - m)/M * 20 + (S - s)/s * 80) * A(z) * B(s).

Memory saved counts a fifth and size saved four fifths; A gates by accuracy and B by size, in two
presets: `zte`, the seed competition's absolute steps, and `relative`, the same steps carried
over to any baseline. Every input is checked here (finite, in range), so a caller may pass
figures straight from a file or a command line.
"""

import math

from npdc.errors import UserError

MB = 10 ** 6  # the zte preset's size steps are decimal megabytes
PRESETS = ("relative", "zte")
_SLACK = 1e-9  # relative slack on every step boundary, so 0.973 - 0.003 counts as 0.97


def _number(value, what, low=None, above=None):
    """A finite float; UserError if it is not one, is below `low` or is not above `above`."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(value):
        raise UserError(f"{what} must be finite, got {value}")
    if (low is not None and value < low) or (above is not None and value <= above):
        bound = f">= {low}" if low is not None else f"> {above}"
        raise UserError(f"{what} must be {bound}, got {value}")
    return value


def accuracy_fraction(value, what):
    """`value` as an accuracy in [0, 1]; a UserError names `what` otherwise (a percentage, NaN)."""
    value = _number(value, what, low=0.0)
    if value > 1:
        raise UserError(f"{what} is a fraction in [0, 1], got {value} (a percentage?)")
    return value


def _step(value, steps, at_least):
    """Factor of the first (limit, factor) that `value` reaches: value >= limit when at_least,
    else value <= limit; 0 when none does. Boundaries are inclusive."""
    for limit, factor in steps:
        slack = _SLACK * max(abs(limit), 1.0)
        if (value >= limit - slack) if at_least else (value <= limit + slack):
            return factor
    return 0.0


def score(S, s, M, m, z, preset="relative", z0=None):
    """Score = ((M - m)/M * 20 + (S - s)/s * 80) * A(z) * B(s).

    S, s: model size before and after (bytes); M, m: inference memory before and after (bytes);
    z: accuracy after, z0: accuracy before (fractions in [0, 1]). Presets, boundaries inclusive:
      zte:      A = 1 for z >= 0.97, 0.9 for z >= 0.965, else 0;
                B = 1 for s <= 40 MB, 0.9 for <= 50 MB, 0.8 for <= 63 MB, else 0 (MB = 10^6 bytes)
      relative: A = 1 for z >= z0 - 0.003, 0.9 for z >= z0 - 0.008, else 0;
                B = 1 for s <= 0.537 S, 0.9 for <= 0.671 S, 0.8 for <= 0.846 S, else 0
    (relative carries the zte steps over to any baseline). Returns the score and its parts."""
    if preset not in PRESETS:
        raise UserError(f"unknown score preset {preset!r}; known: {', '.join(PRESETS)}")
    S, s = _number(S, "size before", above=0), _number(s, "size after", above=0)
    M, m = _number(M, "memory before", above=0), _number(m, "memory after", low=0)
    z = accuracy_fraction(z, "accuracy after")
    if preset == "zte":
        a_steps = [(0.97, 1.0), (0.965, 0.9)]
        b_steps = [(40 * MB, 1.0), (50 * MB, 0.9), (63 * MB, 0.8)]
    else:
        if z0 is None:
            raise UserError("the relative score preset needs the baseline accuracy z0")
        z0 = accuracy_fraction(z0, "accuracy before")
        a_steps = [(z0 - 0.003, 1.0), (z0 - 0.008, 0.9)]
        b_steps = [(0.537 * S, 1.0), (0.671 * S, 0.9), (0.846 * S, 0.8)]
    A, B = _step(z, a_steps, True), _step(s, b_steps, False)
    memory_term, size_term = (M - m) / M * 20, (S - s) / s * 80
    return {"preset": preset, "score": (memory_term + size_term) * A * B, "A": A, "B": B,
            "memory_term": memory_term, "size_term": size_term,
            "S": S, "s": s, "M": M, "m": m, "z": z, "z0": z0}
