"""The back-off search on fake evaluators whose answer is known."""

import math

import pytest

from npdc.compress.backoff import Backoff, search


def fake(threshold, log):
    """A measurement: candidate c costs c points; it passes when c <= threshold."""
    def measure(batch):
        log.append(list(batch))
        return [float(c) for c in batch]
    return measure, (lambda cost: cost <= threshold)


@pytest.mark.parametrize("width", [1, 2, 3])
@pytest.mark.parametrize("n", [1, 2, 5, 8, 13])
def test_finds_the_last_passing_candidate_in_few_rounds(n, width):
    for threshold in range(-1, n):
        log = []
        measure, passes = fake(threshold, log)
        state = search(n, measure, passes, width=width)
        assert state.best == (threshold if threshold >= 0 else None)
        assert len(log) <= math.ceil(math.log(n + 1, width + 1)) + 1
        assert all(len(batch) <= width for batch in log)
        measured = [c for batch in log for c in batch]
        assert len(measured) == len(set(measured))  # nothing measured twice
        assert [c for c, _, _ in state.tried] == measured


def test_results_come_back_in_the_order_of_the_jobs():
    seen = []

    def measure(batch):
        seen.append(batch)
        return [{"candidate": c} for c in batch]

    state = search(9, measure, lambda r: r["candidate"] <= 4, width=3)
    assert all(result["candidate"] == c for c, result, _ in state.tried)
    assert state.best == 4


def test_a_noisy_failure_never_yields_an_unmeasured_answer():
    """Candidate 3 fails by noise although 5 would pass: the answer is a measured pass."""
    state = search(8, lambda batch: list(batch), lambda c: c != 3 and c <= 5)
    assert state.best is not None
    assert any(c == state.best and ok for c, _, ok in state.tried)


def test_a_resumed_search_does_not_measure_again():
    log = []
    measure, passes = fake(5, log)
    first = search(13, measure, passes, rounds=2)
    before = list(first.tried)
    more = []
    measure2, _ = fake(5, more)
    resumed = search(13, measure2, passes, start=Backoff(tried=list(before)))
    assert resumed.best == 5
    remeasured = {c for batch in more for c in batch} & {c for c, _, _ in before}
    assert not remeasured


def test_measure_must_answer_every_job():
    with pytest.raises(ValueError, match="results"):
        search(4, lambda batch: [], lambda r: True)
