"""Selection Relevance Score (SRS): how well a selection of training examples explains a test.

For one test instance with loss gradient ``g: (d,)`` and a selection of ``k`` training
examples whose gradients are the rows of ``A: (k, d)`` (paper.md section 1):

1. simplex weights ``t`` (non-negative, summing to 1), from one of two solvers (``SOLVERS``):

   - ``"paper"`` (default, what the paper ran): ``t_ls = pinv(A.T) @ g``, the
     minimum-norm unconstrained least-squares weights, then
     ``t = project_onto_simplex(t_ls)``. This is NOT the simplex-constrained optimum.
   - ``"exact"``: the true minimiser of ``||A.T @ t - g||^2`` over the simplex
     (``exact_simplex_weights``), a small convex QP solved by a finite active-set method
     on the Gram form ``Q = A A^T``, ``b = A g``;

2. ``r = g - A.T @ t``, the part of the test gradient the selection leaves unexplained;
3. ``ratio = Var(g) / (Var(r) + EPS)`` with population variances over the ``d``
   coordinates, and ``dB = 10 * log10(ratio)``.

Above 0 dB the weighted selection reconstructs the test gradient better than presenting
nothing (the zero vector); below 0 dB it does worse. The paper aggregates over test
instances as a mean of linear ratios converted to dB (``mean_of_ratios_db``);
``ratio_of_expectations_db`` is the alternative ``sum Var(g) / sum Var(r)``, which a few
instances with a near-perfect reconstruction cannot dominate.

Note that "exact" minimises ``||r||^2``, not ``Var(r) = ||r - mean(r)||^2 / d``: its dB is
at least the paper solver's when the gradients have (near) zero mean over their
coordinates, as large raw gradients do, but that is not guaranteed for arbitrary inputs.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from exemplar.errors import InvalidInputError

EPS = 1e-8
"""Added to Var(r) so a perfect reconstruction gives a large but finite ratio."""

BOUND_CHUNK_ROWS = 4096
"""Rows per chunk in ``best_single_ratio``."""

SOLVERS = ("paper", "exact")
"""Coefficient solvers ``selection_relevance`` accepts: "paper" = pinv then simplex projection,
"exact" = the simplex-constrained least-squares optimum (``exact_simplex_weights``)."""

KKT_RTOL = 1e-10
"""Relative tolerance of the exact solver's optimality test (reduced gradients >= -tol)."""

EQUALITY_SOLVE_RTOL = 1e-12
"""The exact solver's face QPs take the LU solution when its residual is below this (relative)."""

EQUALITY_SOLVE_MAX_WEIGHT = 1e6
"""... and its weights are below this in size: larger ones mean a (near-)singular face, where the
minimum-norm least-squares solution is taken instead."""

FISTA_ITERATIONS = 3000
"""Accelerated projected-gradient iterations of the exact solver's fallback."""


@dataclass(frozen=True)
class Relevance:
    """The SRS of one selection for one test instance."""

    weights: np.ndarray  # (k,) simplex weights, one per selected training example
    ratio: float  # linear Var(g) / (Var(r) + EPS)
    db: float  # 10 * log10(ratio); -inf when the test gradient has zero variance
    var_g: float = float("nan")  # population variance of the test gradient g over its d coordinates
    var_r: float = float("nan")  # population variance of the residual r = g - A.T @ weights


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


def _as_float(x: np.ndarray, name: str, dtype: type[np.floating]) -> np.ndarray:
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


def _as_float32(x: np.ndarray, name: str) -> npt.NDArray[np.float32]:
    """Cast ``x`` to float32, refusing non-numeric and (after the cast) non-finite values."""
    return _as_float(x, name, np.float32)


def _checked_pair(
    test_grad: np.ndarray, train_grads: np.ndarray, dtype: type[np.floating]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Validate ``test_grad: (d,)`` and ``train_grads: (k, d)``; cast to ``dtype``, return float64."""
    g_in = _as_float(test_grad, "test_grad", dtype)
    a_in = _as_float(train_grads, "train_grads", dtype)
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


def _simplex_least_squares(g: npt.NDArray[np.float64], a: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """``argmin_{t in simplex} ||a.T @ t - g||^2`` for validated float64 ``g: (d,)``, ``a: (k, d)``."""
    return _simplex_gram_qp(a @ a.T, a @ g)


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
    q = _as_float(gram, "gram", np.float64)
    v = _as_float(b, "b", np.float64)
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
    g, a = _checked_pair(test_grad, train_grads, np.float64)
    return _simplex_least_squares(g, a)


# ---------------------------------------------------------------- the score


def selection_relevance(test_grad: np.ndarray, train_grads: np.ndarray, solver: str = "paper") -> Relevance:
    """SRS of the selection ``train_grads: (k, d)`` for the test gradient ``test_grad: (d,)``.

    Both are cast to float32, as in the paper, and the arithmetic then runs in float64 on
    those values (no overflow or lost digits from tiny or huge gradients). ``solver`` is
    one of ``SOLVERS`` (module docstring). For "paper" the pseudo-inverse drops singular
    values below ``max(k, d) * eps(float32)`` times the largest: that is the
    ``torch.linalg.pinv`` default the authors ran in float32, and below it a singular
    value is float32 rounding noise, so a near-collinear selection gets the minimum-norm
    solution instead of that noise inverted into weights of ~1e6. "exact" gives the
    simplex weights with the smallest ``||r||^2`` (``exact_simplex_weights``).
    ``weights`` are float64; ``var_g`` and ``var_r`` are the two variances of the ratio.
    """
    if solver not in SOLVERS:
        raise InvalidInputError(f"unknown solver {solver!r}; available solvers: {SOLVERS}")
    g, a = _checked_pair(test_grad, train_grads, np.float32)
    if solver == "exact":
        weights = _simplex_least_squares(g, a)  # (k,)
    else:
        rtol = max(a.shape) * float(np.finfo(np.float32).eps)
        t_ls = np.linalg.pinv(a.T, rtol=rtol) @ g  # (k,)
        weights = project_onto_simplex(t_ls)  # (k,)
    r = g - a.T @ weights  # (d,)
    var_g = float(np.var(g))
    var_r = float(np.var(r))
    ratio = var_g / (var_r + EPS)
    db = ratio_db(ratio)
    return Relevance(weights=weights, ratio=ratio, db=db, var_g=var_g, var_r=var_r)


def paper_weights_gram(gram: np.ndarray, b: np.ndarray, dims: int) -> np.ndarray:
    """The "paper" solver's weights from the Gram form: ``project_onto_simplex(pinv(A.T) @ g)``.

    ``gram = A A^T: (k, k)``, ``b = A g: (k,)``, ``dims = d``. With ``A.T = U S V^T``,
    ``pinv(A.T) @ g = V S^-2 V^T (A g)`` over the kept singular values, and ``S^2`` are the
    eigenvalues of ``gram``; a singular value is kept when it exceeds ``rtol`` times the
    largest, ``rtol = max(k, d) * eps(float32)``, the ``torch.linalg.pinv`` default the
    authors ran in float32. At ``d >= 1 / eps(float32) ~ 8.4M`` nothing is kept, ``t_ls = 0``
    and the weights are uniform ``1/k``, as theirs were: no ``(k, d)`` matrix is needed.
    """
    q = _as_float(gram, "gram", np.float64)
    v = _as_float(b, "b", np.float64)
    k = q.shape[0]
    if k == 1:
        return np.ones(1)
    lam, vec = np.linalg.eigh((q + q.T) / 2.0)  # ascending eigenvalues = squared singular values
    sigma = np.sqrt(np.maximum(lam, 0.0))
    rtol = max(k, int(dims)) * float(np.finfo(np.float32).eps)
    keep = sigma > rtol * float(sigma[-1])
    t_ls = vec[:, keep] @ ((vec[:, keep].T @ v) / lam[keep])  # (k,)
    return project_onto_simplex(t_ls)


def gram_relevance(
    gram: np.ndarray,
    b: np.ndarray,
    gg: float,
    sums: np.ndarray,
    sum_g: float,
    dims: int,
    solver: str = "paper",
) -> Relevance:
    """The SRS from inner products alone: ``selection_relevance(g, A, solver)`` without ``A``.

    ``gram = A A^T: (k, k)``, ``b = A g: (k,)``, ``gg = g . g``, ``sums = A 1: (k,)`` (each
    row's coordinate sum), ``sum_g = 1 . g`` and ``dims = d``: what `exemplar.fullspace`
    computes in the model's own space, where ``d`` is millions and ``A`` is never formed.
    ``d Var(r) = ||r||^2 - (1 . r)^2 / d`` with ``||r||^2 = g.g - 2 t.b + t.Q t`` and
    ``1 . r = 1 . g - t . sums``; float64 throughout.
    """
    if solver not in SOLVERS:
        raise InvalidInputError(f"unknown solver {solver!r}; available solvers: {SOLVERS}")
    q = _as_float(gram, "gram", np.float64)
    v = _as_float(b, "b", np.float64)
    s = _as_float(sums, "sums", np.float64)
    k = q.shape[0]
    if q.ndim != 2 or q.shape != (k, k) or k == 0 or v.shape != (k,) or s.shape != (k,):
        raise InvalidInputError(f"gram must be (k, k) with b and sums (k,); got {q.shape}, {v.shape}, {s.shape}")
    if dims < 1:
        raise InvalidInputError(f"dims must be >= 1; got {dims}")
    weights = _simplex_gram_qp(q, v) if solver == "exact" else paper_weights_gram(q, v, dims)
    r_sq = float(gg) - 2.0 * float(weights @ v) + float(weights @ q @ weights)
    r_sum = float(sum_g) - float(weights @ s)
    var_g = max(float(gg) / dims - (float(sum_g) / dims) ** 2, 0.0)
    var_r = max(r_sq / dims - (r_sum / dims) ** 2, 0.0)
    ratio = var_g / (var_r + EPS)
    db = ratio_db(ratio)
    return Relevance(weights=weights, ratio=ratio, db=db, var_g=var_g, var_r=var_r)


def ratio_upper_bound(test_grad: np.ndarray, train_grads: np.ndarray) -> float:
    """A certified upper bound on the SRS ratio of ANY selection from ``train_grads: (n, d)``.

    Every selection ``S`` (any ``k``, either solver) weights its examples on the simplex, so
    its residual is ``g - A.T @ t`` for some ``t`` on the simplex of all ``n`` examples (zero
    off ``S``) and ``Var(r) >= min_t Var(g - A.T @ t)``. That minimum is a QP on the centred
    vectors (``Var(r) = ||r - mean(r)||^2 / d``), solved with the exact solver; its
    Frank-Wolfe duality gap turns the solution into a lower bound on the minimum that holds
    whatever the solver's accuracy. Returns ``Var(g) / (lower bound + EPS)``: no selection
    from these examples can score above it (inputs are cast to float32 as in
    ``selection_relevance``).
    """
    g, a = _checked_pair(test_grad, train_grads, np.float32)
    g_c = g - g.mean()  # (d,)
    a_c = a - a.mean(axis=1, keepdims=True)  # (n, d)
    t = _simplex_least_squares(g_c, a_c)  # (n,)
    r = g_c - a_c.T @ t  # (d,)
    grad = -2.0 * (a_c @ r)  # (n,) gradient of ||g_c - A_c.T t||^2 at t
    gap = float(grad @ t - grad.min())  # f(t) - f* <= gap (convexity, linear minimum at a vertex)
    lower = max(float(r @ r) - gap, 0.0) / g.shape[0]
    return float(np.var(g)) / (lower + EPS)


def best_single_ratio(test_grad: np.ndarray, train_grads: np.ndarray) -> float:
    """The exact best SRS ratio of any ONE example of ``train_grads: (n, d)`` (the k = 1 optimum).

    A single example gets weight 1 under both solvers (the simplex has one point), so its
    residual is ``g - a_i`` and the best one minimises ``Var(g - a_i)`` over all ``n`` rows:
    no k = 1 selection method can score above it. Same float32 casting as
    ``selection_relevance``; rows are taken in chunks so ``n`` may be large (a memmap).
    """
    g, _ = _checked_pair(test_grad, np.asarray(train_grads[:1]), np.float32)
    n = train_grads.shape[0]
    best = math.inf
    for start in range(0, n, BOUND_CHUNK_ROWS):
        _, a = _checked_pair(test_grad, np.asarray(train_grads[start : start + BOUND_CHUNK_ROWS]), np.float32)
        best = min(best, float(np.min(np.var(g - a, axis=1))))  # (chunk,) residual variances
    return float(np.var(g)) / (best + EPS)


def ratio_db(ratio: float) -> float:
    """A linear score ratio in dB: ``10 * log10(ratio)``, ``-inf`` for 0."""
    return 10.0 * math.log10(ratio) if ratio > 0 else -math.inf


def mean_of_ratios_db(ratios: Sequence[float]) -> float:
    """The paper's aggregate: mean of the LINEAR ratios, then converted to dB.

    ``-inf`` when every ratio is 0. Report per-instance values alongside it.
    """
    try:
        arr = np.asarray(ratios, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"ratios must be a sequence of numbers: {exc}") from exc
    if arr.ndim != 1 or arr.size == 0:
        raise InvalidInputError("ratios must be a non-empty flat sequence of numbers")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise InvalidInputError("ratios must be finite and non-negative (linear SRS ratios)")
    mean = float(np.mean(arr))
    return ratio_db(mean)


def ratio_of_expectations_db(var_g: Sequence[float], var_r: Sequence[float]) -> float:
    """Aggregate over test instances as a ratio of sums: ``10 * log10(sum(var_g) / (sum(var_r) + EPS * n))``.

    ``var_g[i]`` and ``var_r[i]`` are the ``Relevance.var_g`` / ``var_r`` of instance ``i``
    (n instances). Unlike ``mean_of_ratios_db`` a few near-perfect reconstructions, whose
    linear ratios approach ``1/EPS``, cannot dominate it. ``-inf`` when every ``var_g`` is 0.
    """
    try:
        vg = np.asarray(var_g, dtype=np.float64)
        vr = np.asarray(var_r, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"var_g and var_r must be sequences of numbers: {exc}") from exc
    if vg.ndim != 1 or vg.size == 0 or vr.ndim != 1 or vr.size == 0:
        raise InvalidInputError("var_g and var_r must be non-empty flat sequences of numbers")
    if vg.shape != vr.shape:
        raise InvalidInputError(f"var_g has {vg.size} values but var_r has {vr.size}; pass one of each per instance")
    if not (np.all(np.isfinite(vg)) and np.all(np.isfinite(vr))) or np.any(vg < 0) or np.any(vr < 0):
        raise InvalidInputError("var_g and var_r must be finite and non-negative (population variances)")
    return ratio_db(float(np.sum(vg)) / (float(np.sum(vr)) + EPS * vg.size))
