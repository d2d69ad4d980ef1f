"""Oracle and property tests for exemplar.selection (paper.md sections 2 and 4)."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from exemplar.errors import InvalidInputError
from exemplar.selection import (
    STRATEGIES,
    TIE_RTOL,
    facility_location,
    most_influential_order,
    random_selection,
    topk,
)

PROPERTY_SETTINGS = settings(max_examples=50, deadline=None)
LAMBDAS = (0.0, 0.25, 0.5, 0.75, 1.0)


# ---------------------------------------------------------------- oracle (float64 loops)


def oracle_facility_location(influence: np.ndarray, grads: np.ndarray, k: int, lam: float, pool_size: int) -> list[int]:
    """Direct transcription of paper.md section 4 "Balanced", full re-evaluation per step."""
    n, d = grads.shape
    infl = [float(x) for x in influence]
    rows = [[float(x) for x in grads[i]] for i in range(n)]
    # 1. pool: top-m by |I|, ties in input order
    pool = sorted(range(n), key=lambda i: (-abs(infl[i]), i))[:pool_size]
    m = len(pool)
    # 2. cost -|I| min-max rescaled to [1, m]
    c = [-abs(infl[i]) for i in pool]
    lo, hi = min(c), max(c)
    cost = [1.0 if hi == lo else 1.0 + (ci - lo) / (hi - lo) * (m - 1) for ci in c]
    # 3. s_ab = cos(g_a, g_b)^2, 0 for a zero gradient
    norms = [math.sqrt(sum(x * x for x in rows[i])) for i in pool]

    def sim(a: int, b: int) -> float:
        if norms[a] == 0.0 or norms[b] == 0.0:
            return 0.0
        dot = sum(rows[pool[a]][j] * rows[pool[b]][j] for j in range(d))
        return (dot / (norms[a] * norms[b])) ** 2

    s = [[sim(a, b) for b in range(m)] for a in range(m)]

    # 4. gain(a|S) = sum_b max(0, s_ab - max_{e in S} s_eb), max over empty S = 0
    def gain(a: int, selected: list[int]) -> float:
        total = 0.0
        for b in range(m):
            covered = 0.0
            for e in selected:
                covered = max(covered, s[e][b])
            total += max(0.0, s[a][b] - covered)
        return total

    # 5. greedy on (gain + 1)^lam / cost^(1 - lam), ties (up to rounding) to the earliest
    #    in pool order
    selected: list[int] = []
    while len(selected) < min(k, m):
        scores = {a: (gain(a, selected) + 1.0) ** lam / cost[a] ** (1.0 - lam) for a in range(m) if a not in selected}
        top = max(scores.values())
        selected.append(min(a for a, sc in scores.items() if sc >= top * (1.0 - TIE_RTOL)))
    return [pool[a] for a in selected]


def random_problem(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Influence (n,) and gradients (n, d) with clustered directions, so coverage matters."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4, d))
    grads = centres[rng.integers(0, 4, size=n)] + 0.6 * rng.normal(size=(n, d))
    influence = rng.normal(size=n) * rng.lognormal(size=n)
    return influence, grads


# ---------------------------------------------------------------- facility location

ORACLE_CASES = [
    (n, pool_size, k, lam) for n, pool_size in [(40, 15), (40, 60), (120, 100)] for k in (1, 5, 10) for lam in LAMBDAS
]


@pytest.mark.parametrize(("n", "pool_size", "k", "lam"), ORACLE_CASES)
def test_facility_location_matches_oracle(n: int, pool_size: int, k: int, lam: float) -> None:
    influence, grads = random_problem(n, d=6, seed=n + 7 * k)
    got = facility_location(influence, grads, k, lam=lam, pool_size=pool_size)
    expected = oracle_facility_location(influence, grads, k, lam, pool_size)
    assert got.dtype == np.int64
    assert got.tolist() == expected


@pytest.mark.parametrize("lam", LAMBDAS)
def test_facility_location_with_zero_gradients_matches_oracle(lam: float) -> None:
    influence, grads = random_problem(30, d=5, seed=99)
    order = most_influential_order(influence)
    grads[order[[0, 3, 7]]] = 0.0  # zero-norm gradients inside the pool
    got = facility_location(influence, grads, 8, lam=lam, pool_size=20)
    assert got.tolist() == oracle_facility_location(influence, grads, 8, lam, 20)


@pytest.mark.parametrize("k", [1, 5, 10])
def test_facility_location_lambda_zero_is_topk(k: int) -> None:
    influence, grads = random_problem(50, d=4, seed=k)
    got = facility_location(influence, grads, k, lam=0.0, pool_size=30)
    np.testing.assert_array_equal(got, topk(influence, k))


def test_facility_location_lambda_one_prefers_coverage() -> None:
    """Two identical strong directions and a weaker orthogonal one: lam=1 covers both."""
    influence = np.array([-3.0, -2.9, -1.0])
    grads = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    assert facility_location(influence, grads, 2, lam=1.0).tolist() == [0, 2]
    assert facility_location(influence, grads, 2, lam=0.0).tolist() == [0, 1]


def test_facility_location_cost_scale_by_hand() -> None:
    """Pool A, B, C with |I| = 3, 2, 1, so costs 1, 2, 3; B and C share one direction.

    Empty S: gain(A) = 1, gain(B) = gain(C) = 2. At lam = 0.66 the score of A is
    2^0.66 = 1.580 and of B is 3^0.66 / 2^0.34 = 1.631, so B comes first; then A
    (gain 1, score 1.580) beats C (gain 0, score 1 / 3^0.34 = 0.689). A cost range of
    [1, m + 1] instead of [1, m] would give B 1.512 and flip the first pick.
    """
    influence = np.array([-3.0, 2.0, -1.0])
    grads = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, -2.0]])
    assert facility_location(influence, grads, 3, lam=0.66).tolist() == [1, 0, 2]
    assert oracle_facility_location(influence, grads, 3, 0.66, 100) == [1, 0, 2]
    assert facility_location(influence, grads, 3, lam=0.6).tolist() == [0, 1, 2]


problems = st.integers(1, 25).flatmap(
    lambda n: st.tuples(
        hnp.arrays(np.float64, n, elements=st.floats(-1e6, 1e6, allow_nan=False)),
        hnp.arrays(np.float64, (n, 3), elements=st.floats(-1e3, 1e3, allow_nan=False)),
    )
)


@PROPERTY_SETTINGS
@given(
    problems,
    st.integers(1, 12),
    st.integers(1, 30),
    st.floats(0.0, 1.0, allow_nan=False),
)
def test_facility_location_selects_distinct_pool_members(
    problem: tuple[np.ndarray, np.ndarray], k: int, pool_size: int, lam: float
) -> None:
    influence, grads = problem
    got = facility_location(influence, grads, k, lam=lam, pool_size=pool_size)
    pool = set(most_influential_order(influence)[:pool_size].tolist())
    assert got.dtype == np.int64
    assert len(got) == min(k, pool_size, len(influence))
    assert len(set(got.tolist())) == len(got)
    assert set(got.tolist()) <= pool


@PROPERTY_SETTINGS
@given(problems, st.integers(1, 12), st.integers(1, 30))
def test_facility_location_lambda_zero_is_topk_property(
    problem: tuple[np.ndarray, np.ndarray], k: int, pool_size: int
) -> None:
    """Holds with ties in |I| too: equal costs fall back to pool (= top-k) order."""
    influence, grads = problem
    got = facility_location(influence, grads, k, lam=0.0, pool_size=pool_size)
    np.testing.assert_array_equal(got, topk(influence, min(k, pool_size)))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"influence": np.ones(3), "grads": np.ones((4, 2))}, "4 rows but influence has 3"),
        ({"grads": np.ones(3)}, "grads must be 2-D"),
        ({"grads": np.ones((3, 0))}, "d must be >= 1"),
        ({"influence": np.ones((3, 1))}, "influence must be 1-D"),
        ({"influence": np.array([1.0, np.nan, 0.0])}, "influence contains NaN"),
        ({"grads": np.array([[1.0], [np.inf], [0.0]])}, "grads contains NaN"),
        ({"lam": -0.1}, r"lam must be in \[0, 1\]"),
        ({"lam": 1.5}, r"lam must be in \[0, 1\]"),
        ({"lam": math.nan}, r"lam must be in \[0, 1\]"),
        ({"k": 0}, "k must be >= 1"),
        ({"k": 2.5}, "k must be an integer"),
        ({"pool_size": 0}, "pool_size must be >= 1"),
    ],
)
def test_facility_location_rejects_bad_input(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {
        "influence": np.array([1.0, -2.0, 0.5]),
        "grads": np.ones((3, 2)),
        "k": 2,
        "lam": 0.5,
        "pool_size": 100,
    }
    args.update(kwargs)
    with pytest.raises(InvalidInputError, match=match):
        facility_location(
            args["influence"],  # type: ignore[arg-type]
            args["grads"],  # type: ignore[arg-type]
            args["k"],  # type: ignore[arg-type]
            lam=args["lam"],  # type: ignore[arg-type]
            pool_size=args["pool_size"],  # type: ignore[arg-type]
        )


# ---------------------------------------------------------------- top-k and orderings


def test_most_influential_order_is_by_abs_descending_and_stable() -> None:
    influence = np.array([0.5, -3.0, 2.0, -0.5, 3.0, 0.0])
    assert most_influential_order(influence).tolist() == [1, 4, 2, 0, 3, 5]
    assert most_influential_order(influence).dtype == np.int64


@PROPERTY_SETTINGS
@given(
    hnp.arrays(np.float64, st.integers(0, 40), elements=st.floats(-10, 10, allow_nan=False)),
    st.integers(1, 50),
)
def test_topk_is_distinct_prefix_of_the_order(influence: np.ndarray, k: int) -> None:
    got = topk(influence, k)
    assert got.dtype == np.int64
    assert len(got) == min(k, len(influence))
    assert len(set(got.tolist())) == len(got)
    expected = sorted(range(len(influence)), key=lambda i: (-abs(influence[i]), i))[:k]
    assert got.tolist() == expected


@pytest.mark.parametrize(("k", "match"), [(0, "k must be >= 1"), (True, "k must be an integer"), ("3", "integer")])
def test_topk_rejects_bad_k(k: object, match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        topk(np.ones(3), k)  # type: ignore[arg-type]


def test_topk_rejects_nan() -> None:
    with pytest.raises(InvalidInputError, match="NaN"):
        topk(np.array([1.0, np.nan]), 1)


# ---------------------------------------------------------------- random


@PROPERTY_SETTINGS
@given(st.integers(0, 200), st.integers(1, 50), st.integers(0, 2**32))
def test_random_selection_is_distinct_in_range_and_reproducible(n: int, k: int, seed: int) -> None:
    got = random_selection(n, k, seed)
    assert got.dtype == np.int64
    assert len(got) == min(k, n)
    assert len(set(got.tolist())) == len(got)
    assert all(0 <= i < n for i in got.tolist())
    np.testing.assert_array_equal(got, random_selection(n, k, seed))


def test_random_selection_depends_on_seed_and_is_roughly_uniform() -> None:
    assert random_selection(1000, 10, 1).tolist() != random_selection(1000, 10, 2).tolist()
    n, k, trials = 10, 3, 3000
    counts = np.zeros(n)
    for seed in range(trials):
        counts[random_selection(n, k, seed)] += 1
    expected = trials * k / n  # 900 per index; binomial sd ~ 25
    assert np.all(np.abs(counts - expected) < 150)


@pytest.mark.parametrize(
    ("n", "k", "seed", "match"),
    [(-1, 2, 0, "n must be"), (5, 0, 0, "k must be"), (5, 2, -1, "seed must be")],
)
def test_random_selection_rejects_bad_input(n: int, k: int, seed: int, match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        random_selection(n, k, seed)


def test_strategy_registry_names() -> None:
    assert STRATEGIES == ("topk", "random", "balanced")
