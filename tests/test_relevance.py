"""Oracle and property tests for exemplar.relevance (paper.md section 1)."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.optimize import minimize

import exemplar.relevance as relevance_module
import exemplar.simplex as simplex_module
from exemplar.errors import InvalidInputError
from exemplar.relevance import (
    EPS,
    SOLVERS,
    Relevance,
    best_single_ratio,
    mean_of_ratios_db,
    ratio_of_expectations_db,
    ratio_upper_bound,
    selection_relevance,
)
from exemplar.simplex import exact_simplex_weights, project_onto_simplex, simplex_weights_gram

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
    assert SOLVERS == ("paper", "exact")
    with pytest.raises(InvalidInputError, match=r"unknown solver 'nnls'; available solvers: \('paper', 'exact'\)"):
        selection_relevance(np.ones(2), np.ones((1, 2)), solver="nnls")


@pytest.mark.parametrize("solver", SOLVERS)
def test_relevance_variances_are_consistent_with_ratio(solver: str) -> None:
    rng = np.random.default_rng(5)
    a = rng.normal(size=(4, 30))
    g = rng.normal(size=4) @ a + rng.normal(size=30)
    rel = selection_relevance(g, a, solver=solver)
    g64 = g.astype(np.float32).astype(np.float64)
    a64 = a.astype(np.float32).astype(np.float64)
    assert rel.var_g == pytest.approx(oracle_population_variance(list(g64)), rel=1e-12)
    r = g64 - a64.T @ rel.weights
    assert rel.var_r == pytest.approx(oracle_population_variance(list(r)), rel=1e-9)
    assert rel.ratio == pytest.approx(rel.var_g / (rel.var_r + EPS), rel=1e-15)
    assert ratio_of_expectations_db([rel.var_g], [rel.var_r]) == pytest.approx(rel.db, abs=1e-12)


# ---------------------------------------------------------------- exact simplex least squares


def objective(a: np.ndarray, g: np.ndarray, t: np.ndarray) -> float:
    """||A.T t - g||^2, the quantity the exact solver minimises."""
    return float(np.sum((a.T @ t - g) ** 2))


def objective_scale(a: np.ndarray, g: np.ndarray) -> float:
    """An upper bound on the objective's magnitude over the simplex, for relative tolerances."""
    return float(np.sum(g * g) + np.max(np.sum(a * a, axis=1))) + 1e-300


def slsqp_simplex_least_squares(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    """An independent solve of the same QP, made feasible by projecting SLSQP's answer."""
    k = a.shape[0]
    res = minimize(
        lambda t: objective(a, g, t),
        x0=np.full(k, 1.0 / k),
        jac=lambda t: 2.0 * (a @ (a.T @ t - g)),
        bounds=[(0.0, None)] * k,
        constraints=[{"type": "eq", "fun": lambda t: float(t.sum() - 1.0), "jac": np.ones_like}],
        method="SLSQP",
        options={"ftol": 1e-15, "maxiter": 1000},
    )
    return project_onto_simplex(np.asarray(res.x, dtype=np.float64))


def assert_on_simplex(t: np.ndarray, k: int) -> None:
    assert t.dtype == np.float64
    assert t.shape == (k,)
    assert np.all(t >= 0)
    assert abs(float(t.sum()) - 1.0) <= SUM_TOL_F64


def assert_kkt(a: np.ndarray, g: np.ndarray, t: np.ndarray, rtol: float = 1e-9) -> None:
    """With grad = Q t - b and mu its common value on the support: grad >= mu - tol everywhere."""
    q = a @ a.T
    b = a @ g
    grad = q @ t - b
    support = t > 0
    assert np.any(support)
    mu = float(np.mean(grad[support]))
    tol = rtol * max(float(np.max(np.abs(q))), float(np.max(np.abs(b))), 1e-300)
    assert np.all(np.abs(grad[support] - mu) <= tol), (grad[support] - mu, tol)
    assert np.all(grad[~support] >= mu - tol), (grad[~support] - mu, tol)


def random_problem(seed: int, k: int, d_kind: str, g_kind: str, degenerate: bool) -> tuple[np.ndarray, np.ndarray]:
    """Random (g, A) in float64: rank deficient (d = k - 1), small or large d, with duplicated and
    collinear rows when ``degenerate``, g inside the hull / inside the cone / anywhere."""
    rng = np.random.default_rng(seed)
    d = {"rank_deficient": max(k - 1, 1), "small": 5, "large": 200}[d_kind]
    a = rng.normal(size=(k, d)) * rng.choice([1e-3, 1.0, 1e3])
    if degenerate and k >= 3:
        i, j, dup, col = rng.choice(k, size=4, replace=True)
        a[dup] = a[i]
        w = rng.uniform()
        a[col] = w * a[i] + (1 - w) * a[j]
    scale = float(np.abs(a).max())
    if g_kind == "hull":
        g = rng.dirichlet(np.ones(k)) @ a
    elif g_kind == "cone":
        g = rng.exponential(2.0, size=k) @ a
    elif g_kind == "span":
        g = rng.normal(size=k) @ a + 0.1 * scale * rng.normal(size=d)
    else:
        g = scale * rng.normal(size=d)
    return g, a


problems = st.builds(
    random_problem,
    seed=st.integers(0, 2**32 - 1),
    k=st.integers(1, 30),
    d_kind=st.sampled_from(["rank_deficient", "small", "large"]),
    g_kind=st.sampled_from(["hull", "cone", "span", "anywhere"]),
    degenerate=st.booleans(),
)


@PROPERTY_SETTINGS
@given(problems)
def test_exact_satisfies_kkt(problem: tuple[np.ndarray, np.ndarray]) -> None:
    g, a = problem
    t = exact_simplex_weights(g, a)
    assert_on_simplex(t, a.shape[0])
    assert_kkt(a, g, t)


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("d_kind", ["rank_deficient", "small", "large"])
def test_exact_satisfies_kkt_on_degenerate_problems(seed: int, d_kind: str) -> None:
    g, a = random_problem(
        seed, k=3 + seed, d_kind=d_kind, g_kind=["hull", "cone", "span", "anywhere"][seed % 4], degenerate=True
    )
    t = exact_simplex_weights(g, a)
    assert_on_simplex(t, a.shape[0])
    assert_kkt(a, g, t)


@pytest.mark.parametrize("seed", range(12))
def test_exact_on_rows_collinear_up_to_float32_rounding(seed: int) -> None:
    """Near-singular faces (singular values ~1e-8 of A's, ~1e-16 of Q's): the Gram-form limit.

    The optimality conditions hold to ~1e-8 (module docstring) and the objective is no
    worse than an independent solve.
    """
    g, a = random_problem(
        seed,
        k=[5, 9, 30][seed % 3],
        d_kind=["rank_deficient", "small", "large"][seed % 3],
        g_kind="anywhere",
        degenerate=True,
    )
    a = a.astype(np.float32).astype(np.float64)
    t = exact_simplex_weights(g, a)
    assert_on_simplex(t, a.shape[0])
    assert_kkt(a, g, t, rtol=1e-7)
    if a.shape[0] <= 10:
        tol = 1e-10 * objective_scale(a, g)
        assert objective(a, g, t) <= objective(a, g, slsqp_simplex_least_squares(a, g)) + tol


@PROPERTY_SETTINGS
@given(
    seed=st.integers(0, 2**32 - 1),
    k=st.integers(1, 12),
    d=st.sampled_from([2, 5, 40]),
    offset=st.booleans(),
)
def test_exact_objective_beats_paper_and_slsqp(seed: int, k: int, d: int, offset: bool) -> None:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(k, d))
    g = rng.normal(size=k) @ a + rng.normal(size=d)
    if offset:
        a += 3.0 * rng.normal(size=(k, 1))
        g += 3.0 * rng.normal()
    # On the float32-cast values, which is what selection_relevance works on.
    a = a.astype(np.float32).astype(np.float64)
    g = g.astype(np.float32).astype(np.float64)
    exact = selection_relevance(g, a, solver="exact")
    np.testing.assert_array_equal(exact.weights, exact_simplex_weights(g, a))
    paper = selection_relevance(g, a, solver="paper")
    tol = 1e-10 * objective_scale(a, g)
    f_exact = objective(a, g, exact.weights)
    assert f_exact <= objective(a, g, paper.weights) + tol
    assert f_exact <= objective(a, g, slsqp_simplex_least_squares(a, g)) + tol


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
def test_exact_on_arbitrary_float32_arrays(arrays: tuple[np.ndarray, np.ndarray]) -> None:
    """Zeros, repeats and subnormals as hypothesis draws them: still on the simplex and no worse than paper."""
    g, a = arrays
    exact = selection_relevance(g, a, solver="exact")
    paper = selection_relevance(g, a, solver="paper")
    assert_on_simplex(exact.weights, a.shape[0])
    g64 = g.astype(np.float64)
    a64 = a.astype(np.float64)
    assert objective(a64, g64, exact.weights) <= objective(a64, g64, paper.weights) + 1e-10 * objective_scale(a64, g64)


@PROPERTY_SETTINGS
@given(hnp.arrays(np.float64, st.integers(1, 30), elements=st.floats(-1e3, 1e3, allow_nan=False)))
def test_exact_with_identity_rows_is_the_simplex_projection(v: np.ndarray) -> None:
    """A = I: min ||t - v||^2 over the simplex is, by definition, the projection of v."""
    expected = oracle_simplex_projection([float(x) for x in v])
    t = exact_simplex_weights(v, np.eye(v.size))
    np.testing.assert_allclose(t, expected, rtol=0, atol=1e-9 * max(1.0, float(np.abs(v).max())))


def test_exact_single_example_has_weight_one() -> None:
    rng = np.random.default_rng(4)
    a = rng.normal(size=(1, 30))
    g = rng.normal(size=30)
    np.testing.assert_array_equal(exact_simplex_weights(g, a), [1.0])
    rel = selection_relevance(g, a, solver="exact")
    np.testing.assert_array_equal(rel.weights, [1.0])
    assert rel.ratio == pytest.approx(selection_relevance(g, a).ratio, rel=1e-15)


@pytest.mark.parametrize(("k", "d", "seed"), [(2, 50, 0), (5, 100, 1), (10, 64, 2), (30, 200, 3)])
def test_exact_recovers_a_convex_combination(k: int, d: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(k, d))
    w = rng.dirichlet(np.ones(k))
    g = w @ a
    rel = selection_relevance(g, a, solver="exact")
    assert rel.var_r < 1e-10 * rel.var_g
    assert rel.db > 60
    # k <= d generic rows: the combination is unique (up to the float32 cast of g and A).
    np.testing.assert_allclose(rel.weights, w, rtol=0, atol=1e-5)
    np.testing.assert_allclose(exact_simplex_weights(g, a), w, rtol=0, atol=1e-12)


def test_exact_known_values() -> None:
    eye = np.eye(2)
    np.testing.assert_allclose(exact_simplex_weights(np.array([2.0, 0.0]), eye), [1.0, 0.0])
    np.testing.assert_allclose(exact_simplex_weights(np.array([0.5, 0.5]), eye), [0.5, 0.5])
    # g halfway between two examples, a third far away: the midpoint of the first two.
    a = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 10.0]])
    np.testing.assert_allclose(exact_simplex_weights(np.array([0.5, 0.5, 0.0]), a), [0.5, 0.5, 0.0], atol=1e-12)
    # Duplicated example: any split of its weight is optimal; the fit is what counts.
    a = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    t = exact_simplex_weights(np.array([0.6, 0.4]), a)
    np.testing.assert_allclose([t[0] + t[1], t[2]], [0.6, 0.4], atol=1e-12)
    # Every example gradient zero: every weighting is optimal; uniform.
    np.testing.assert_array_equal(exact_simplex_weights(np.ones(3), np.zeros((4, 3))), [0.25] * 4)


def test_exact_beats_paper_on_a_known_instance() -> None:
    """Where pinv + projection is suboptimal.

    t_ls = (-1, 0, 1) projects to (0, 0, 1), residual (-1, 0, 0) with ||r||^2 = 1; on the
    edge t = (0, s, 1 - s) the residual is (1 - s, 0, -s), smallest at s = 1/2 (||r||^2 = 1/2).
    """
    a = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    g = np.array([0.0, 1.0, 1.0])
    paper = selection_relevance(g, a, solver="paper")
    exact = selection_relevance(g, a, solver="exact")
    np.testing.assert_allclose(paper.weights, [0.0, 0.0, 1.0], atol=1e-7)
    np.testing.assert_allclose(exact.weights, [0.0, 0.5, 0.5], atol=1e-12)
    np.testing.assert_allclose(slsqp_simplex_least_squares(a, g), [0.0, 0.5, 0.5], atol=1e-6)
    assert objective(a, g, paper.weights) == pytest.approx(1.0)
    assert objective(a, g, exact.weights) == pytest.approx(0.5)
    assert exact.var_r == pytest.approx(np.var([0.5, 0.0, -0.5]))
    assert exact.db > paper.db


@PROPERTY_SETTINGS
@given(seed=st.integers(0, 2**32 - 1), k=st.integers(1, 20), d=st.sampled_from([3, 5, 40, 200]))
def test_exact_db_at_least_paper_db_on_zero_mean_gradients(seed: int, k: int, d: int) -> None:
    """With zero-mean g and rows, Var(r) = ||r||^2 / d, so the smaller ||r||^2 is the higher SRS."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(k, d))
    g = rng.uniform() * rng.normal(size=k) @ a + rng.normal(size=d)
    a -= a.mean(axis=1, keepdims=True)
    g -= g.mean()
    exact = selection_relevance(g, a, solver="exact")
    paper = selection_relevance(g, a, solver="paper")
    assert exact.db >= paper.db - 1e-9


def test_exact_db_can_be_below_paper_db_when_gradients_have_a_mean() -> None:
    """The exact solver minimises ||r||^2, which counts mean(r); the SRS ignores it.

    Documented limitation (module docstring): here exact has the smaller ||r||^2 but the
    paper solver happens to leave a residual with a larger mean and a smaller variance.
    """
    rng = np.random.default_rng(0)
    for _ in range(200):
        k, d = 3, 5
        a = rng.normal(size=(k, d)) + 3.0 * rng.normal(size=(k, 1))
        g = rng.normal(size=k) @ a + rng.normal(size=d) + 3.0 * rng.normal()
        exact = selection_relevance(g, a, solver="exact")
        paper = selection_relevance(g, a, solver="paper")
        a64 = a.astype(np.float32).astype(np.float64)
        g64 = g.astype(np.float32).astype(np.float64)
        assert objective(a64, g64, exact.weights) <= objective(a64, g64, paper.weights) + 1e-12
        if exact.db < paper.db - 1e-6:
            return
    pytest.fail("expected an instance where minimising ||r||^2 does not maximise Var(g)/Var(r)")


def test_exact_fallback_reaches_the_optimum(monkeypatch: pytest.MonkeyPatch) -> None:
    """If the active-set method stalls, projected gradient continues from where it stopped."""
    rng = np.random.default_rng(9)
    a = rng.normal(size=(15, 40))
    g = rng.normal(size=15) @ a + rng.normal(size=40)
    expected = exact_simplex_weights(g, a)
    start = np.zeros(15)
    start[0] = 1.0

    def stalled(q: np.ndarray, b: np.ndarray, tol: float, max_solves: int) -> tuple[np.ndarray, bool]:
        return start.copy(), False

    monkeypatch.setattr(simplex_module, "_active_set", stalled)
    t = exact_simplex_weights(g, a)
    assert_on_simplex(t, 15)
    assert objective(a, g, t) <= objective(a, g, start)
    assert objective(a, g, t) == pytest.approx(objective(a, g, expected), rel=1e-6)


def test_exact_is_fast_at_paper_scale() -> None:
    """k = 100 examples of d = 10^4 (float32 gradients), as in a k = 100 pool."""
    rng = np.random.default_rng(1)
    a = rng.normal(size=(100, 10_000)).astype(np.float32)
    g = (rng.normal(size=100) @ a + rng.normal(size=10_000)).astype(np.float32)
    rel = selection_relevance(g, a, solver="exact")
    assert_on_simplex(rel.weights, 100)
    assert_kkt(a.astype(np.float64), g.astype(np.float64), rel.weights)
    assert rel.db >= selection_relevance(g, a).db - 1e-9


@pytest.mark.parametrize(
    ("test_grad", "train_grads", "match"),
    [
        (np.ones(4), np.ones((2, 5)), "d=5 columns but test_grad has d=4"),
        (np.ones(4), np.ones((0, 4)), "k >= 1"),
        (np.ones(0), np.ones((2, 0)), "d must be >= 1"),
        (np.array([1.0, np.nan]), np.ones((2, 2)), "test_grad contains NaN or infinite values$"),
        (np.ones(2), np.array([[1.0, np.inf]]), "train_grads contains NaN or infinite"),
        (np.ones((1, 2)), np.ones((1, 2)), "test_grad must be 1-D"),
        (np.array(["a", "b"]), np.ones((1, 2)), "real numeric"),
    ],
)
def test_exact_weights_reject_bad_input(test_grad: np.ndarray, train_grads: np.ndarray, match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        exact_simplex_weights(test_grad, train_grads)


def test_exact_weights_keep_float64_precision() -> None:
    """exact_simplex_weights works on the values as given, so float64 beyond float32 range is fine."""
    t = exact_simplex_weights(np.array([1e39, 0.0]), np.array([[1e39, 0.0], [0.0, 1e39]]))
    np.testing.assert_allclose(t, [1.0, 0.0], atol=1e-12)


@pytest.mark.parametrize(("k", "d", "seed"), [(1, 5, 0), (4, 30, 1), (12, 8, 2), (40, 100, 3)])
def test_exact_weights_from_the_gram_form_match_the_vector_form(k: int, d: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(k, d)) + rng.normal(size=d)  # a shared component, as gradients have
    g = rng.normal(size=d)
    t = simplex_weights_gram(a @ a.T, a @ g)
    np.testing.assert_allclose(t, exact_simplex_weights(g, a), atol=1e-9)
    assert t.sum() == pytest.approx(1.0)
    assert np.all(t >= 0)
    reduced = (a @ a.T) @ t - a @ g  # KKT: equal on the support, no smaller off it
    mu = float(t @ reduced)
    assert np.all(reduced >= mu - 1e-8 * (1.0 + np.abs(a @ g).max()))
    assert np.allclose(reduced[t > 1e-12], mu, atol=1e-8 * (1.0 + np.abs(a @ g).max()))


@pytest.mark.parametrize("max_solves", [0, 1, 3, 10_000])
def test_simplex_weights_gram_with_a_solve_budget_is_feasible_and_no_worse_than_one_row(max_solves: int) -> None:
    rng = np.random.default_rng(7)
    a = rng.normal(size=(30, 60))
    g = a[:12].mean(axis=0)  # the optimum mixes 12 rows: more face solves than the small budgets
    q, b = a @ a.T, a @ g

    def objective(t: np.ndarray) -> float:
        return float(np.sum((a.T @ t - g) ** 2))

    t = simplex_weights_gram(q, b, max_solves=max_solves)
    assert t.sum() == pytest.approx(1.0)
    assert np.all(t >= 0)
    assert objective(t) <= min(objective(np.eye(30)[i]) for i in range(30)) + 1e-9
    exact = simplex_weights_gram(q, b)
    if max_solves >= 10_000:
        np.testing.assert_allclose(t, exact, atol=1e-9)
    elif max_solves <= 3:
        assert objective(t) > objective(exact) + 1e-6  # the budget binds here


@pytest.mark.parametrize(
    ("gram", "b", "match"),
    [
        (np.ones((2, 3)), np.ones(2), "square matrix"),
        (np.ones((0, 0)), np.ones(0), "square matrix"),
        (np.eye(2), np.ones(3), "to match gram"),
        (np.array([[1.0, np.nan], [np.nan, 1.0]]), np.ones(2), "NaN"),
        (np.eye(2), np.array(["a", "b"]), "real numeric"),
    ],
)
def test_exact_weights_gram_reject_bad_input(gram: np.ndarray, b: np.ndarray, match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        simplex_weights_gram(gram, b)


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


def test_ratio_of_expectations_db_is_ratio_of_sums() -> None:
    # (1 + 3) / (0.5 + 1.5 + 2 * EPS) = 4 / 2.00000002
    assert ratio_of_expectations_db([1.0, 3.0], [0.5, 1.5]) == pytest.approx(10 * math.log10(4 / 2.00000002), abs=1e-12)
    assert ratio_of_expectations_db([2.0], [0.02]) == pytest.approx(10 * math.log10(2.0 / (0.02 + 1e-8)), abs=1e-12)
    # Differs from the mean of ratios: (100 + 1) / 2 = 50.5 there, 2 / 1.01 here.
    assert ratio_of_expectations_db([1.0, 1.0], [0.01, 1.0]) == pytest.approx(
        10 * math.log10(2.0 / (1.01 + 2e-8)), abs=1e-12
    )
    assert ratio_of_expectations_db([1.0, 0.0], [0.0, 0.0]) == pytest.approx(10 * math.log10(1 / 2e-8), abs=1e-9)
    assert ratio_of_expectations_db([0.0, 0.0], [1.0, 2.0]) == -math.inf


def test_ratio_of_expectations_db_from_relevances() -> None:
    rng = np.random.default_rng(6)
    sum_g = sum_r = 0.0
    var_g, var_r = [], []
    for _ in range(4):
        a = rng.normal(size=(3, 20))
        g = rng.normal(size=20)
        rel = selection_relevance(g, a, solver="exact")
        g64 = g.astype(np.float32).astype(np.float64)
        r = g64 - a.astype(np.float32).astype(np.float64).T @ rel.weights
        sum_g += oracle_population_variance(list(g64))
        sum_r += oracle_population_variance(list(r))
        var_g.append(rel.var_g)
        var_r.append(rel.var_r)
    expected = 10 * math.log10(sum_g / (sum_r + 4 * EPS))
    assert ratio_of_expectations_db(var_g, var_r) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize(
    ("var_g", "var_r", "match"),
    [
        ([], [], "non-empty"),
        ([1.0, 2.0], [1.0], "2 values but var_r has 1"),
        ([1.0, -1.0], [1.0, 1.0], "non-negative"),
        ([1.0], [math.inf], "finite"),
        ([[1.0]], [[1.0]], "flat"),
    ],
)
def test_ratio_of_expectations_db_rejects_bad_input(var_g: list[float], var_r: list[float], match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        ratio_of_expectations_db(var_g, var_r)


def test_projection_of_huge_values_stays_on_simplex() -> None:
    """Rounding of |v| >> 1 must not push the sum off 1 (the k > d and tiny-A regimes)."""
    t = project_onto_simplex(np.array([5e9 + 1e-6, 5e9]))
    assert abs(t.sum() - 1.0) <= SUM_TOL_F64
    np.testing.assert_allclose(t, [0.5, 0.5], atol=1e-5)
    np.testing.assert_array_equal(project_onto_simplex(np.array([1e300, 1e290, 1e300])), [0.5, 0, 0.5])
    np.testing.assert_array_equal(project_onto_simplex(np.array([-1e300, -1e301])), [1.0, 0.0])


@pytest.mark.parametrize("seed", range(6))
def test_ratio_upper_bound_dominates_every_subset_under_both_solvers(seed: int) -> None:
    import itertools

    rng = np.random.default_rng(seed)
    n, d = 7, 5 + seed
    train = rng.normal(size=(n, d)) * rng.uniform(0.2, 3.0, size=(n, 1)) + rng.normal() * (seed % 2)
    test = rng.normal(size=d) * 2.0 + rng.normal() * (seed % 2)
    bound = ratio_upper_bound(test, train)
    best = 0.0
    for k in range(1, n + 1):
        for subset in itertools.combinations(range(n), k):
            for solver in ("paper", "exact"):
                best = max(best, selection_relevance(test, train[list(subset)], solver=solver).ratio)
    assert best <= bound * (1 + 1e-9)
    # and it is tight: the minimum of Var(r) over the whole simplex, found by SLSQP on the variance
    g, a = test.astype(np.float32).astype(np.float64), train.astype(np.float32).astype(np.float64)
    cons = ({"type": "eq", "fun": lambda t: t.sum() - 1.0},)
    res = minimize(lambda t: np.var(g - a.T @ t), np.full(n, 1 / n), bounds=[(0, 1)] * n, constraints=cons, tol=1e-14)
    assert bound == pytest.approx(np.var(g) / (res.fun + relevance_module.EPS), rel=1e-4)


@pytest.mark.parametrize("seed", range(4))
def test_best_single_ratio_is_the_best_one_example_selection(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(seed)
    n, d = 23, 9
    train = rng.normal(size=(n, d)) * rng.uniform(0.2, 3.0, size=(n, 1)) + rng.normal() * (seed % 2)
    test = rng.normal(size=d) * 2.0
    expected = max(
        selection_relevance(test, train[[i]], solver=solver).ratio for i in range(n) for solver in ("paper", "exact")
    )
    monkeypatch.setattr(relevance_module, "BOUND_CHUNK_ROWS", 5)  # chunking must not change the answer
    assert best_single_ratio(test, train) == pytest.approx(expected, rel=1e-9)
    assert best_single_ratio(test, train) <= ratio_upper_bound(test, train) * (1 + 1e-9)
    with pytest.raises(InvalidInputError, match="d=9 columns"):
        best_single_ratio(np.zeros(4), train)


def test_ratio_upper_bound_rejects_bad_input() -> None:
    with pytest.raises(InvalidInputError, match="d=3 columns"):
        ratio_upper_bound(np.ones(4), np.ones((2, 3)))
