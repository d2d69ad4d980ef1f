"""Selection Relevance Score (SRS): how well a selection of training examples explains a test.

For one test instance with loss gradient ``g: (d,)`` and a selection of ``k`` training
examples whose gradients are the rows of ``A: (k, d)`` (paper.md section 1):

1. simplex weights ``t`` (non-negative, summing to 1), from one of two solvers (``SOLVERS``):

   - ``"paper"`` (default, what the paper ran): ``t_ls = pinv(A.T) @ g``, the
     minimum-norm unconstrained least-squares weights, then
     ``t = project_onto_simplex(t_ls)``. This is NOT the simplex-constrained optimum.
   - ``"exact"``: the true minimiser of ``||A.T @ t - g||^2`` over the simplex
     (``exemplar.simplex.exact_simplex_weights``), a small convex QP solved by a finite
     active-set method on the Gram form ``Q = A A^T``, ``b = A g``;

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
from exemplar.simplex import (
    as_float,
    checked_pair,
    project_onto_simplex,
    simplex_least_squares,
    simplex_weights_gram,
)

EPS = 1e-8
"""Added to Var(r) so a perfect reconstruction gives a large but finite ratio."""

BOUND_CHUNK_ROWS = 4096
"""Rows per chunk in ``best_single_ratio``."""

SOLVERS = ("paper", "exact")
"""Coefficient solvers ``selection_relevance`` accepts: "paper" = pinv then simplex projection,
"exact" = the simplex-constrained least-squares optimum (``exact_simplex_weights``)."""


@dataclass(frozen=True)
class Relevance:
    """The SRS of one selection for one test instance."""

    weights: np.ndarray  # (k,) simplex weights, one per selected training example
    ratio: float  # linear Var(g) / (Var(r) + EPS)
    db: float  # 10 * log10(ratio); -inf when the test gradient has zero variance
    var_g: float = float("nan")  # population variance of the test gradient g over its d coordinates
    var_r: float = float("nan")  # population variance of the residual r = g - A.T @ weights


def _as_float32(x: np.ndarray, name: str) -> npt.NDArray[np.float32]:
    """Cast ``x`` to float32, refusing non-numeric and (after the cast) non-finite values."""
    return as_float(x, name, np.float32)


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
    g, a = checked_pair(test_grad, train_grads, np.float32)
    if solver == "exact":
        weights = simplex_least_squares(g, a)  # (k,)
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
    q = as_float(gram, "gram", np.float64)
    v = as_float(b, "b", np.float64)
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
    q = as_float(gram, "gram", np.float64)
    v = as_float(b, "b", np.float64)
    s = as_float(sums, "sums", np.float64)
    k = q.shape[0]
    if q.ndim != 2 or q.shape != (k, k) or k == 0 or v.shape != (k,) or s.shape != (k,):
        raise InvalidInputError(f"gram must be (k, k) with b and sums (k,); got {q.shape}, {v.shape}, {s.shape}")
    if dims < 1:
        raise InvalidInputError(f"dims must be >= 1; got {dims}")
    weights = simplex_weights_gram(q, v) if solver == "exact" else paper_weights_gram(q, v, dims)
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
    g, a = checked_pair(test_grad, train_grads, np.float32)
    g_c = g - g.mean()  # (d,)
    a_c = a - a.mean(axis=1, keepdims=True)  # (n, d)
    t = simplex_least_squares(g_c, a_c)  # (n,)
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
    g, _ = checked_pair(test_grad, np.asarray(train_grads[:1]), np.float32)
    n = train_grads.shape[0]
    best = math.inf
    for start in range(0, n, BOUND_CHUNK_ROWS):
        _, a = checked_pair(test_grad, np.asarray(train_grads[start : start + BOUND_CHUNK_ROWS]), np.float32)
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
