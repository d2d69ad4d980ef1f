"""Simplex weights: the convex combinations of example gradients the relevance score uses.

- ``project_onto_simplex``: Euclidean projection onto ``{t >= 0, sum(t) = 1}`` (the paper's
  solver projects its pseudo-inverse weights with it).
- ``exact_simplex_weights`` / ``simplex_weights_gram``: the exact minimiser of
  ``||A.T @ t - g||^2`` over the simplex, from the gradients or from their Gram form, by a
  finite active-set method with an accelerated projected-gradient fallback.
- ``as_float`` / ``checked_pair``: the input checks shared with ``exemplar.relevance``.

The tests check every solver against SciPy's general-purpose constrained minimiser.
"""

import math

import numpy as np
import numpy.typing as npt

from exemplar.errors import InvalidInputError
from exemplar.threads import checkpoint, products

KKT_RTOL = 1e-10
"""Relative tolerance of the exact solver's optimality test (reduced gradients >= -tol)."""

EQUALITY_SOLVE_RTOL = 1e-12
"""The exact solver's face QPs take the LU solution when its residual is below this (relative)."""

EQUALITY_SOLVE_MAX_WEIGHT = 1e6
"""... and its weights are below this in size: larger ones mean a (near-)singular face, where the
minimum-norm least-squares solution is taken instead."""

FISTA_ITERATIONS = 3000
"""Accelerated projected-gradient iterations of the exact solver's fallback."""


def project_onto_simplex(v: np.ndarray) -> np.ndarray:
    """Euclidean projection of ``v: (k,)`` onto ``{t >= 0, sum(t) = 1}``, same dtype as ``v``.

    Sort-based algorithm of Duchi et al. (2008) / Chen & Ye (2011): the projection is
    ``max(v - theta, 0)`` for the one threshold ``theta`` that makes it sum to 1, with
    ``theta = mean(top rho of v) - 1/rho``. It is evaluated as ``(v - mean) + 1/rho`` in
    (at least) float64, renormalised and cast back, so the result sums to 1 within the
    output dtype's rounding even when ``|v|`` dwarfs 1; integer or boolean input gives
    float64.
    """
    arr = np.asarray(v)
    if arr.dtype.kind not in "biuf":
        raise InvalidInputError(f"v must be a real numeric vector, got dtype {arr.dtype}")
    if arr.ndim != 1 or arr.size == 0:
        raise InvalidInputError(f"v must be a non-empty 1-D vector, got shape {arr.shape}")
    out_dtype = arr.dtype if arr.dtype.kind == "f" else np.dtype(np.float64)
    x = arr.astype(np.promote_types(out_dtype, np.float64))
    if not np.all(np.isfinite(x)):
        raise InvalidInputError("v contains NaN or infinite values")
    u = np.sort(x)[::-1]
    j = np.arange(1, x.size + 1, dtype=x.dtype)
    mean_top = np.cumsum(u) / j  # mean of the j largest entries
    # u_j - (css_j - 1)/j > 0 holds for j = 1..rho and fails after; at j = 1 the left
    # side is exactly 0 + 1, so there is always a hit.
    rho = int(np.flatnonzero((u - mean_top) + 1 / j > 0)[-1]) + 1
    t = np.maximum((x - mean_top[rho - 1]) + 1 / rho, 0)
    # In exact arithmetic t sums to 1; rounding of |v| >> 1 leaves an error near
    # |v| * eps, removed by renormalising. If |v| is so large that rounding wiped out
    # every entry, the limit is all mass on the largest entries.
    total = t.sum()
    if total > 0:
        t = t / total
    else:
        t = (x == u[0]).astype(x.dtype)
        t /= t.sum()
    return t.astype(out_dtype)


def as_float(x: np.ndarray, name: str, dtype: type[np.floating]) -> np.ndarray:
    """Cast ``x`` to ``dtype``, refusing non-numeric and (after the cast) non-finite values."""
    try:
        arr = np.asarray(x)
    except ValueError as exc:  # ragged nested sequences
        raise InvalidInputError(f"{name} must be a numeric array: {exc}") from exc
    if arr.dtype.kind not in "biuf":
        raise InvalidInputError(f"{name} must be real numeric, got dtype {arr.dtype}")
    with np.errstate(over="ignore"):  # overflow is reported below as non-finite
        out = arr.astype(dtype)
    if not np.all(np.isfinite(out)):
        too_large = " (or values too large for float32)" if dtype is np.float32 else ""
        raise InvalidInputError(f"{name} contains NaN or infinite values{too_large}")
    return out


def checked_pair(
    test_grad: np.ndarray, train_grads: np.ndarray, dtype: type[np.floating]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Validate ``test_grad: (d,)`` and ``train_grads: (k, d)``; cast to ``dtype``, return float64."""
    g_in = as_float(test_grad, "test_grad", dtype)
    a_in = as_float(train_grads, "train_grads", dtype)
    if g_in.ndim != 1:
        raise InvalidInputError(f"test_grad must be 1-D (d,), got shape {g_in.shape}")
    if a_in.ndim != 2:
        raise InvalidInputError(f"train_grads must be 2-D (k, d), got shape {a_in.shape}")
    g = g_in.astype(np.float64)  # (d,)
    a = a_in.astype(np.float64)  # (k, d)
    if g.shape[0] == 0:
        raise InvalidInputError("test_grad is empty: the gradient dimension d must be >= 1")
    if a.shape[0] == 0:
        raise InvalidInputError("train_grads is empty: select at least one example (k >= 1)")
    if a.shape[1] != g.shape[0]:
        raise InvalidInputError(
            f"train_grads has d={a.shape[1]} columns but test_grad has d={g.shape[0]}; "
            "both must be gradients w.r.t. the same parameters"
        )
    return g, a


# ---------------------------------------------------------------- exact simplex least squares
#
# minimise f(t) = ||A.T t - g||^2 = t.Q t - 2 b.t + g.g over {t >= 0, sum(t) = 1}, with
# Q = A A^T (k, k) and b = A g (k,). Below, ``grad`` is (Q t - b) = half the gradient of f.
# t is optimal iff, with mu = grad_i on the support (all equal there), grad_i >= mu for
# every i off the support (KKT: mu is the multiplier of sum(t) = 1).


def _gram_objective(q: np.ndarray, b: np.ndarray, t: np.ndarray) -> float:
    """``f(t) - g.g`` in the Gram form."""
    return float(t @ (q @ t) - 2.0 * (b @ t))


def _equality_qp(q_ss: np.ndarray, b_s: np.ndarray) -> np.ndarray:
    """A minimiser of ``z.Q z - 2 b.z`` subject to ``sum(z) = 1`` only (minimum-norm KKT solution).

    Solves ``[[Q_SS, 1], [1^T, 0]] [z; nu] = [b_S; 1]``, by LU when that is accurate and
    its weights stay moderate, else by least squares: Q_SS may be singular (duplicated or
    collinear examples, k > d); the system is still consistent because b_S lies in the
    range of Q_SS, and every solution is a minimiser.
    """
    m = q_ss.shape[0]
    kkt = np.empty((m + 1, m + 1))
    kkt[:m, :m] = q_ss
    kkt[:m, m] = 1.0
    kkt[m, :m] = 1.0
    kkt[m, m] = 0.0
    rhs = np.append(b_s, 1.0)
    try:  # an LU solve is ~10x cheaper than least squares; keep it only when it is accurate
        sol = np.linalg.solve(kkt, rhs)
        residual = float(np.linalg.norm(kkt @ sol - rhs))
        accurate = bool(np.all(np.isfinite(sol))) and residual <= EQUALITY_SOLVE_RTOL * (
            float(np.abs(kkt).max()) * float(np.abs(sol).max()) + float(np.abs(rhs).max())
        )
        if accurate and float(np.abs(sol[:m]).max()) <= EQUALITY_SOLVE_MAX_WEIGHT:
            return np.asarray(sol[:m], dtype=np.float64)
    except np.linalg.LinAlgError:
        pass
    sol = np.linalg.lstsq(kkt, rhs, rcond=None)[0]
    return np.asarray(sol[:m], dtype=np.float64)


def _active_set(q: np.ndarray, b: np.ndarray, tol: float, max_solves: int) -> tuple[np.ndarray, bool]:
    """Primal active-set method from the best vertex; returns (t, converged).

    Each outer step adds the coordinate with the most negative reduced gradient, which
    strictly decreases f; the inner loop re-solves the equality-constrained QP on the
    support and, while a weight of that solution is <= 0, steps from the current feasible
    point towards it only until the first weight reaches zero and drops that coordinate.
    Every support the outer loop leaves is optimal for its face at a strictly smaller f,
    so no support repeats and the method is finite; ``max_solves`` only guards against
    floating-point stalls (then converged is False).
    """
    k = q.shape[0]
    t = np.zeros(k)
    t[int(np.argmin(np.diag(q) - 2.0 * b))] = 1.0
    support = t > 0
    solves = 0
    while True:
        checkpoint()  # a long solve lets light requests go first (exemplar.threads.Priority)
        on = np.flatnonzero(support)
        grad = t[on] @ q[on] - b  # t is zero off the support; q is symmetric, and whole rows copy fast
        mu = float(t @ grad)  # = grad_i on the support, averaged with the weights
        reduced = np.where(support, np.inf, grad - mu)
        j = int(np.argmin(reduced))
        if not reduced[j] < -tol:
            return t, True
        support[j] = True
        while True:
            if solves >= max_solves:
                return t, False
            solves += 1
            idx = np.flatnonzero(support)
            z = _equality_qp(q[np.ix_(idx, idx)], b[idx])
            if np.all(z > 0):
                t = np.zeros(k)
                t[idx] = z / z.sum()
                break
            cur = t[idx]
            denom = cur - z  # > 0 where z <= 0 < cur
            blocked = z <= 0
            steps = np.divide(cur, denom, out=np.zeros_like(cur), where=blocked & (denom > 0))
            steps[~blocked] = np.inf
            pos = int(np.argmin(steps))
            alpha = float(steps[pos])
            if alpha <= 0:
                # Only the coordinate just added has t = 0 on the support; in exact arithmetic
                # its weight in z is positive, so this is a floating-point stall.
                support[j] = False
                return t, False
            new = cur + alpha * (z - cur)
            new[pos] = 0.0
            new = np.maximum(new, 0.0)
            t = np.zeros(k)
            t[idx] = new / new.sum()
            support = t > 0


def _fista(q: np.ndarray, b: np.ndarray, t0: np.ndarray, iterations: int) -> np.ndarray:
    """Accelerated projected gradient (FISTA, step 1/L with L = largest eigenvalue of Q) from ``t0``."""
    lipschitz = float(np.linalg.eigvalsh(q)[-1])
    if not lipschitz > 0:
        return t0
    x = t0.copy()
    y = t0.copy()
    momentum = 1.0
    for _ in range(iterations):
        x_next = project_onto_simplex(y - (q @ y - b) / lipschitz)
        momentum_next = (1.0 + math.sqrt(1.0 + 4.0 * momentum * momentum)) / 2.0
        y = x_next + ((momentum - 1.0) / momentum_next) * (x_next - x)
        x, momentum = x_next, momentum_next
    return x


def simplex_least_squares(g: npt.NDArray[np.float64], a: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """``argmin_{t in simplex} ||a.T @ t - g||^2`` for validated float64 ``g: (d,)``, ``a: (k, d)``."""
    return _simplex_gram_qp(products(a), a @ g)  # in blocks of rows over a large pool


def _simplex_gram_qp(
    q: npt.NDArray[np.float64], b: npt.NDArray[np.float64], max_solves: int | None = None
) -> npt.NDArray[np.float64]:
    """``argmin_{t in simplex} t.Q t - 2 b.t`` for a PSD float64 ``q: (k, k)`` and ``b: (k,)``.

    ``max_solves=None``: exact (active set, FISTA if it stalls). Otherwise the active set's
    iterate after at most that many face solves, with no fallback.
    """
    k = q.shape[0]
    if k == 1:
        return np.ones(1)
    scale = float(np.max(np.diag(q)))
    if not scale > 0:  # every selected gradient is zero: all weights give the same residual g
        return np.full(k, 1.0 / k)
    q = (q + q.T) / (2.0 * scale)  # exactly symmetric, largest diagonal 1; same minimiser
    b = b / scale
    tol = KKT_RTOL * max(1.0, float(np.max(np.abs(b))))
    budget = 10 * k + 50 if max_solves is None else max(int(max_solves), 0)
    t, converged = _active_set(q, b, tol, max_solves=budget)
    if not converged and max_solves is None:
        t_pg = _fista(q, b, t, FISTA_ITERATIONS)
        if _gram_objective(q, b, t_pg) < _gram_objective(q, b, t):
            t = t_pg
    t = np.maximum(t, 0.0)
    return np.asarray(t / t.sum(), dtype=np.float64)


def simplex_weights_gram(gram: np.ndarray, b: np.ndarray, *, max_solves: int | None = None) -> np.ndarray:
    """``exact_simplex_weights`` from the Gram form: ``gram = A A^T: (k, k)``, ``b = A g: (k,)``.

    The minimiser depends on ``A`` and ``g`` only through these, so a caller that keeps the
    Gram matrix of a fixed set of rows fits each new ``g`` without touching the ``d``
    coordinates again. Same solver and result conventions as ``exact_simplex_weights``.
    With ``max_solves`` the active-set method stops after that many face solves and returns
    its iterate, which is then only approximate: on the simplex, no worse than the best
    single row, and supported on the rows the method found most useful so far.
    """
    q = as_float(gram, "gram", np.float64)
    v = as_float(b, "b", np.float64)
    if q.ndim != 2 or q.shape[0] != q.shape[1] or q.shape[0] == 0:
        raise InvalidInputError(f"gram must be a non-empty square matrix (k, k), got shape {q.shape}")
    if v.shape != (q.shape[0],):
        raise InvalidInputError(f"b must have shape ({q.shape[0]},) to match gram, got {v.shape}")
    return _simplex_gram_qp(q, v, max_solves)


def exact_simplex_weights(test_grad: np.ndarray, train_grads: np.ndarray) -> np.ndarray:
    """Simplex weights ``t: (k,)`` minimising ``||train_grads.T @ t - test_grad||^2`` exactly.

    ``test_grad: (d,)``, ``train_grads: (k, d)``; the arithmetic is float64 on the values as
    given (``selection_relevance(..., solver="exact")`` first casts them to float32, as
    the paper does). A finite active-set method on ``Q = A A^T``, ``b = A g`` starting from
    the best single example; duplicated or collinear examples (singular Q) get the
    minimum-norm solution on each face. Should floating point stall it (seen only with
    examples collinear up to float32 rounding), accelerated projected gradient continues
    from the last point and the lower objective wins. The result is float64, non-negative
    and sums to 1; for ``k = 1`` it is ``[1.0]``, and when every example gradient is zero
    (any weights are optimal) uniform.

    Precision: the Gram form squares A's condition number, so directions in which the
    examples differ by less than about ``sqrt(eps(float64)) ~ 1e-8`` of their norm are
    resolved only to that level. The objective is then still within ~1e-10 (relative to
    ``||g||^2 + max_i ||a_i||^2``) of the optimum, but the optimality conditions hold to
    ~1e-8 rather than ~1e-14.
    """
    g, a = checked_pair(test_grad, train_grads, np.float64)
    return simplex_least_squares(g, a)
