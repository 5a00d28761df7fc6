"""The percentile sketch: its error bound against exact percentiles, merging, memory."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings, strategies as st

from gradguard._audit._sketch import MIN_INDEXABLE, LogSketch

QUANTILES = (0.0, 0.01, 0.25, 0.5, 0.9, 0.95, 0.99, 1.0)


def exact(values: list[float], q: float) -> float:
    """The value at rank floor(q * (n - 1)) of the sorted values (numpy's method="lower")."""
    ordered = sorted(values)
    return ordered[math.floor(q * (len(ordered) - 1))]


def within_bound(estimate: float | None, true: float, alpha: float) -> bool:
    """The documented bound, with slack for float rounding at bucket edges."""
    assert estimate is not None
    if true < MIN_INDEXABLE:
        return 0.0 <= estimate <= true or math.isclose(estimate, true)
    return abs(estimate - true) <= alpha * true * (1 + 1e-9)


def sketch_of(values: list[float], alpha: float = 0.01, flush_every: int = 0) -> LogSketch:
    s = LogSketch(alpha)
    for i, v in enumerate(values, 1):
        s.add(v)
        if flush_every and i % flush_every == 0:
            s.flush()
    return s


values_st = st.lists(
    st.one_of(
        st.floats(min_value=0.0, max_value=1e12, allow_nan=False),
        st.floats(min_value=1e-3, max_value=1e4),
        st.integers(min_value=0, max_value=10**12),
        st.just(0.0),
    ),
    min_size=1,
    max_size=2000,
)


@settings(max_examples=200, deadline=None)
@given(values=values_st, flush_every=st.sampled_from([0, 1, 7, 300]))
def test_quantiles_stay_within_the_relative_error_bound(
    values: list[float], flush_every: int
) -> None:
    s = sketch_of(values, flush_every=flush_every)
    for q in QUANTILES:
        assert within_bound(s.quantile(q), exact(values, q), s.alpha), q


@settings(max_examples=50, deadline=None)
@given(values=values_st, alpha=st.sampled_from([0.001, 0.01, 0.05]))
def test_the_bound_scales_with_the_chosen_accuracy(values: list[float], alpha: float) -> None:
    s = sketch_of(values, alpha)
    for q in (0.5, 0.95):
        assert within_bound(s.quantile(q), exact(values, q), alpha)


@settings(max_examples=100, deadline=None)
@given(values=values_st)
def test_count_min_and_max_are_exact(values: list[float]) -> None:
    s = sketch_of(values, flush_every=300)
    assert s.count == len(values)
    assert s.min == min(values)
    assert s.max == max(values)


@settings(max_examples=100, deadline=None)
@given(a=values_st, b=values_st)
def test_merging_equals_sketching_the_concatenation(a: list[float], b: list[float]) -> None:
    merged = sketch_of(a)
    merged.merge(sketch_of(b))
    whole = sketch_of(a + b)
    assert merged.count == whole.count
    assert (merged.min, merged.max) == (whole.min, whole.max)
    for q in QUANTILES:
        assert merged.quantile(q) == whole.quantile(q)


@settings(max_examples=200, deadline=None)
@given(
    low=st.floats(min_value=1e-3, max_value=1e3),
    n_low=st.integers(min_value=1, max_value=600),
    n_high=st.integers(min_value=1, max_value=600),
    q=st.floats(min_value=0.0, max_value=1.0),
)
def test_ranks_are_exact_on_a_two_valued_distribution(
    low: float, n_low: int, n_high: int, q: float
) -> None:
    high = low * 10
    n = n_low + n_high
    s = sketch_of([high] * n_high + [low] * n_low)
    # q itself, and the quantiles of the last low and the first high value
    for quantile in (q, (n_low - 1) / (n - 1), min(n_low / (n - 1), 1.0)):
        expected = low if math.floor(quantile * (n - 1)) < n_low else high
        assert within_bound(s.quantile(quantile), expected, s.alpha)


def test_known_answers_on_one_to_a_thousand() -> None:
    s = sketch_of([float(v) for v in range(1, 1001)])
    assert abs(s.quantile(0.5) - 500) <= 5  # type: ignore[operator]
    assert abs(s.quantile(0.95) - 950) <= 9.5  # type: ignore[operator]
    assert abs(s.quantile(0.99) - 990) <= 9.9  # type: ignore[operator]
    assert s.quantile(0.0) == 1.0
    assert s.quantile(1.0) == 1000.0


def test_all_zero_values_report_zero() -> None:
    s = sketch_of([0.0] * 500)
    assert s.quantile(0.5) == 0.0
    assert s.quantile(1.0) == 0.0
    assert s.count == 500


def test_memory_is_bounded_by_the_value_range_not_the_count() -> None:
    s = LogSketch(0.01)
    gamma = 1.01 / 0.99
    for i in range(200_000):
        s.add(1.0 + (i % 1_000_000) * 7.3)  # spans about 1 to 1.46e6
        if i % 10_000 == 0:
            s.flush()
    bound = math.log(1.5e6) / math.log(gamma) + 2
    assert s.bucket_count <= bound
    assert s.count == 200_000


def test_an_empty_sketch_answers_none() -> None:
    s = LogSketch()
    assert s.quantile(0.5) is None
    assert s.min is None
    assert s.max is None
    assert s.count == 0


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, 2.0])
def test_an_accuracy_outside_zero_one_is_refused(alpha: float) -> None:
    with pytest.raises(ValueError, match="relative_accuracy must be strictly between 0 and 1"):
        LogSketch(alpha)


@pytest.mark.parametrize("q", [-0.01, 1.5])
def test_a_quantile_outside_zero_one_is_refused(q: float) -> None:
    with pytest.raises(ValueError, match="quantile must be between 0 and 1"):
        sketch_of([1.0]).quantile(q)


def test_sketches_of_different_accuracy_do_not_merge() -> None:
    with pytest.raises(ValueError, match="same relative_accuracy"):
        LogSketch(0.01).merge(LogSketch(0.02))
