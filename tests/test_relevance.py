"""Oracle and property tests for exemplar.relevance (paper.md section 1)."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.optimize import minimize

from exemplar.errors import InvalidInputError
from exemplar.relevance import (
    EPS,
    Relevance,
    mean_of_ratios_db,
    project_onto_simplex,
    selection_relevance,
)

SUM_TOL_F32 = 1e-5
SUM_TOL_F64 = 1e-10
WEIGHT_ATOL = 1e-9  # same float64 arithmetic on the float32-cast inputs, other order
RATIO_RTOL = 1e-9

PROPERTY_SETTINGS = settings(max_examples=50, deadline=None)


# ---------------------------------------------------------------- oracles (float64 loops)


def oracle_simplex_projection(v: list[float]) -> list[float]:
    """Find theta with sum(max(v_i - theta, 0)) = 1 by bisection, then clip.

    A different algorithm from the sort-based one under test: the projection onto the
    simplex is max(v - theta, 0) for the unique theta making it sum to 1 (KKT), and the
    sum is continuous and decreasing in theta.
    """
    lo = min(v) - 1.0  # sum >= len(v) >= 1 here
    hi = max(v)  # sum = 0 here
    for _ in range(200):
        mid = (lo + hi) / 2
        total = 0.0
        for x in v:
            total += max(x - mid, 0.0)
        if total > 1.0:
            lo = mid
        else:
            hi = mid
    theta = (lo + hi) / 2
    return [max(x - theta, 0.0) for x in v]


def oracle_population_variance(x: list[float]) -> float:
    mean = sum(x) / len(x)
    return sum((xi - mean) ** 2 for xi in x) / len(x)


def oracle_relevance(
    test_grad: np.ndarray, train_grads: np.ndarray, rtol: float | None = None
) -> tuple[list[float], float]:
    """Direct transcription of paper.md section 1 in float64 on the float32-cast inputs."""
    g64 = test_grad.astype(np.float32).astype(np.float64)
    a64 = train_grads.astype(np.float32).astype(np.float64)
    k, d = a64.shape
    pinv = np.linalg.pinv(a64.T) if rtol is None else np.linalg.pinv(a64.T, rtol=rtol)
    t_ls = [sum(pinv[i, j] * g64[j] for j in range(d)) for i in range(k)]
    t = oracle_simplex_projection(t_ls)
    g = [float(x) for x in g64]
    r = [g[j] - sum(a64[i, j] * t[i] for i in range(k)) for j in range(d)]
    ratio = oracle_population_variance(g) / (oracle_population_variance(r) + EPS)
    return t, ratio


# ---------------------------------------------------------------- simplex projection

vectors = st.one_of(
    hnp.arrays(
        np.float64,
        st.integers(1, 30),
        elements=st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False),
    ),
    hnp.arrays(
        np.float32,
        st.integers(1, 30),
        elements=st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=32),
    ),
)


def sum_tol(dtype: np.dtype) -> float:
    return SUM_TOL_F32 if dtype == np.float32 else SUM_TOL_F64


@PROPERTY_SETTINGS
@given(vectors)
def test_projection_is_on_simplex_and_keeps_dtype(v: np.ndarray) -> None:
    t = project_onto_simplex(v)
    assert t.dtype == v.dtype
    assert t.shape == v.shape
    assert np.all(t >= 0)
    assert abs(float(t.sum(dtype=np.float64)) - 1.0) <= sum_tol(v.dtype) * max(1.0, v.size)


@PROPERTY_SETTINGS
@given(vectors)
def test_projection_satisfies_kkt(v: np.ndarray) -> None:
    """There is one theta with t_i = max(v_i - theta, 0) for every i."""
    t = project_onto_simplex(v).astype(np.float64)
    v64 = v.astype(np.float64)
    support = t > 0
    thetas = v64[support] - t[support]
    theta = float(thetas.mean())
    tol = 1e-4 if v.dtype == np.float32 else 1e-9
    scale = max(1.0, float(np.abs(v64).max()))
    assert np.all(np.abs(thetas - theta) <= tol * scale)
    assert np.all(v64[~support] <= theta + tol * scale)


@PROPERTY_SETTINGS
@given(vectors)
def test_projection_matches_bisection_oracle(v: np.ndarray) -> None:
    expected = oracle_simplex_projection([float(x) for x in v])
    tol = 1e-4 if v.dtype == np.float32 else 1e-9
    scale = max(1.0, float(np.abs(v.astype(np.float64)).max()))
    np.testing.assert_allclose(project_onto_simplex(v), expected, rtol=0, atol=tol * scale)


@PROPERTY_SETTINGS
@given(
    hnp.arrays(np.float64, st.integers(1, 30), elements=st.floats(0, 1e3, allow_nan=False)).filter(
        lambda w: w.sum() > 1e-6
    )
)
def test_projection_is_idempotent_on_simplex_points(w: np.ndarray) -> None:
    p = w / w.sum()
    np.testing.assert_allclose(project_onto_simplex(p), p, rtol=0, atol=1e-12)
    once = project_onto_simplex(w)
    np.testing.assert_allclose(project_onto_simplex(once), once, rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_projection_is_the_slsqp_minimiser(seed: int) -> None:
    rng = np.random.default_rng(seed)
    v = rng.normal(scale=2.0, size=8)
    res = minimize(
        lambda t: float(np.sum((t - v) ** 2)),
        x0=np.full(v.size, 1.0 / v.size),
        jac=lambda t: 2 * (t - v),
        bounds=[(0.0, None)] * v.size,
        constraints=[{"type": "eq", "fun": lambda t: float(t.sum() - 1.0), "jac": np.ones_like}],
        method="SLSQP",
        options={"ftol": 1e-12, "maxiter": 500},
    )
    assert res.success
    np.testing.assert_allclose(project_onto_simplex(v), res.x, rtol=0, atol=1e-6)


def test_projection_known_values() -> None:
    np.testing.assert_allclose(project_onto_simplex(np.array([0.5, 0.5])), [0.5, 0.5])
    np.testing.assert_allclose(project_onto_simplex(np.array([2.0, 0.0])), [1.0, 0.0])
    np.testing.assert_allclose(project_onto_simplex(np.array([-3.0])), [1.0])
    np.testing.assert_allclose(project_onto_simplex(np.array([0.0, 0.0, 0.0, 0.0])), [0.25] * 4)
    out = project_onto_simplex(np.array([1, 2, 3]))
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, [0.0, 0.0, 1.0])


@pytest.mark.parametrize(
    ("v", "match"),
    [
        (np.zeros(0), "non-empty 1-D"),
        (np.zeros((2, 2)), "non-empty 1-D"),
        (np.array([1.0, np.nan]), "NaN or infinite"),
        (np.array([1.0, np.inf]), "NaN or infinite"),
        (np.array(["a", "b"]), "real numeric"),
    ],
)
def test_projection_rejects_bad_input(v: np.ndarray, match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        project_onto_simplex(v)


# ---------------------------------------------------------------- selection relevance


@pytest.mark.parametrize(("k", "d", "seed"), [(1, 20, 0), (3, 50, 1), (5, 64, 2), (10, 40, 3)])
def test_relevance_matches_oracle(k: int, d: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(k, d))
    # A test gradient partly in the span of the selection, so weights are non-trivial.
    g = rng.normal(size=k) @ a + 0.5 * rng.normal(size=d)
    rel = selection_relevance(g, a)
    t, ratio = oracle_relevance(g, a)
    assert isinstance(rel, Relevance)
    assert rel.weights.dtype == np.float64
    np.testing.assert_allclose(rel.weights, t, rtol=0, atol=WEIGHT_ATOL)
    assert rel.ratio == pytest.approx(ratio, rel=RATIO_RTOL)
    assert rel.db == pytest.approx(10 * math.log10(ratio), abs=10 * math.log10(1 + RATIO_RTOL))


def test_relevance_more_examples_than_dimensions() -> None:
    """k > d: pinv gives the minimum-norm exact solution, which is then projected."""
    rng = np.random.default_rng(7)
    a = rng.normal(size=(12, 6))
    g = rng.normal(size=6)
    rel = selection_relevance(g, a)
    t, ratio = oracle_relevance(g, a)
    np.testing.assert_allclose(rel.weights, t, rtol=0, atol=WEIGHT_ATOL)
    assert rel.ratio == pytest.approx(ratio, rel=RATIO_RTOL)


def test_relevance_collinear_selection_uses_minimum_norm_solution() -> None:
    """An example that is a combination of others adds a float32-noise singular value.

    It must be cut (as torch.linalg.pinv does), not inverted into weights of ~1e6.
    """
    rng = np.random.default_rng(11)
    a = rng.normal(size=(5, 50)).astype(np.float32)
    a[3] = 0.3 * a[1] + 0.7 * a[2]
    g = rng.normal(size=50).astype(np.float32)
    rel = selection_relevance(g, a)
    t, ratio = oracle_relevance(g, a, rtol=1e-6)  # the mathematically rank-4 system
    np.testing.assert_allclose(rel.weights, t, rtol=0, atol=WEIGHT_ATOL)
    assert rel.ratio == pytest.approx(ratio, rel=RATIO_RTOL)


def test_relevance_single_example_has_weight_one() -> None:
    rng = np.random.default_rng(3)
    a = rng.normal(size=(1, 30))
    g = rng.normal(size=30)
    rel = selection_relevance(g, a)
    np.testing.assert_array_equal(rel.weights, [1.0])
    g64 = g.astype(np.float32).astype(np.float64)
    a64 = a[0].astype(np.float32).astype(np.float64)
    expected = np.var(g64) / (np.var(g64 - a64) + EPS)
    assert rel.ratio == pytest.approx(expected, rel=RATIO_RTOL)


@pytest.mark.parametrize("seed", range(3))
def test_relevance_of_a_selected_test_gradient_is_very_high(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(5, 100))
    rel = selection_relevance(a[2], a)
    assert rel.db > 40
    assert int(np.argmax(rel.weights)) == 2


def test_relevance_zero_test_gradient_is_minus_infinity_db() -> None:
    rel = selection_relevance(np.zeros(4), np.ones((2, 4)))
    assert rel.ratio == 0.0
    assert rel.db == -math.inf


@PROPERTY_SETTINGS
@given(
    st.integers(1, 8).flatmap(
        lambda k: st.integers(1, 16).flatmap(
            lambda d: st.tuples(
                hnp.arrays(np.float32, d, elements=st.floats(-100, 100, width=32)),
                hnp.arrays(np.float32, (k, d), elements=st.floats(-100, 100, width=32)),
            )
        )
    )
)
def test_relevance_weights_are_on_simplex(arrays: tuple[np.ndarray, np.ndarray]) -> None:
    g, a = arrays
    rel = selection_relevance(g, a)
    assert rel.weights.shape == (a.shape[0],)
    assert np.all(rel.weights >= 0)
    assert abs(float(rel.weights.sum()) - 1.0) <= SUM_TOL_F64 * a.shape[0]
    assert rel.ratio >= 0
    assert math.isfinite(rel.ratio)
    if rel.ratio > 0:
        assert rel.db == pytest.approx(10 * math.log10(rel.ratio))


@pytest.mark.parametrize(
    ("test_grad", "train_grads", "match"),
    [
        (np.ones(4), np.ones((2, 5)), "d=5 columns but test_grad has d=4"),
        (np.ones(4), np.ones((0, 4)), "k >= 1"),
        (np.ones(0), np.ones((2, 0)), "d must be >= 1"),
        (np.array([1.0, np.nan]), np.ones((2, 2)), "test_grad contains NaN"),
        (np.ones(2), np.array([[1.0, np.inf]]), "train_grads contains NaN or infinite"),
        (np.ones(2), np.array([[1e39, 1.0]]), "too large for float32"),
        (np.ones((1, 2)), np.ones((1, 2)), "test_grad must be 1-D"),
        (np.ones(2), np.ones(2), "train_grads must be 2-D"),
        (np.array(["a", "b"]), np.ones((1, 2)), "real numeric"),
    ],
)
def test_relevance_rejects_bad_input(test_grad: np.ndarray, train_grads: np.ndarray, match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        selection_relevance(test_grad, train_grads)


def test_relevance_rejects_unknown_solver() -> None:
    with pytest.raises(InvalidInputError, match="unknown solver 'exact'"):
        selection_relevance(np.ones(2), np.ones((1, 2)), solver="exact")


# ---------------------------------------------------------------- aggregation


def test_mean_of_ratios_db_is_mean_then_db() -> None:
    assert mean_of_ratios_db([1.0, 100.0]) == pytest.approx(10 * math.log10(50.5))
    assert mean_of_ratios_db([10.0]) == pytest.approx(10.0)
    assert mean_of_ratios_db([0.0, 0.0]) == -math.inf


@pytest.mark.parametrize(
    ("ratios", "match"),
    [([], "non-empty"), ([1.0, -1.0], "non-negative"), ([1.0, math.nan], "finite")],
)
def test_mean_of_ratios_db_rejects_bad_input(ratios: list[float], match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        mean_of_ratios_db(ratios)


def test_projection_of_huge_values_stays_on_simplex() -> None:
    """Rounding of |v| >> 1 must not push the sum off 1 (the k > d and tiny-A regimes)."""
    t = project_onto_simplex(np.array([5e9 + 1e-6, 5e9]))
    assert abs(t.sum() - 1.0) <= SUM_TOL_F64
    np.testing.assert_allclose(t, [0.5, 0.5], atol=1e-5)
    np.testing.assert_array_equal(project_onto_simplex(np.array([1e300, 1e290, 1e300])), [0.5, 0, 0.5])
    np.testing.assert_array_equal(project_onto_simplex(np.array([-1e300, -1e301])), [1.0, 0.0])
