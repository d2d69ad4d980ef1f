"""Selection Relevance Score (SRS): how well a selection of training examples explains a test.

For one test instance with loss gradient ``g: (d,)`` and a selection of ``k`` training
examples whose gradients are the rows of ``A: (k, d)`` (paper.md section 1):

1. ``t_ls = pinv(A.T) @ g``, the minimum-norm unconstrained least-squares weights;
2. ``t = project_onto_simplex(t_ls)``, so the weights are non-negative and sum to 1
   (this is the paper's solver, NOT the exact simplex-constrained least squares);
3. ``r = g - A.T @ t``, the part of the test gradient the selection leaves unexplained;
4. ``ratio = Var(g) / (Var(r) + EPS)`` with population variances over the ``d``
   coordinates, and ``dB = 10 * log10(ratio)``.

Above 0 dB the weighted selection reconstructs the test gradient better than presenting
nothing (the zero vector); below 0 dB it does worse. The paper aggregates over test
instances as a mean of linear ratios converted to dB (``mean_of_ratios_db``).
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from exemplar.errors import InvalidInputError

EPS = 1e-8
"""Added to Var(r) so a perfect reconstruction gives a large but finite ratio."""

SOLVERS = ("paper",)
"""Coefficient solvers ``selection_relevance`` accepts; "paper" = pinv then simplex projection."""


@dataclass(frozen=True)
class Relevance:
    """The SRS of one selection for one test instance."""

    weights: np.ndarray  # (k,) simplex weights, one per selected training example
    ratio: float  # linear Var(g) / (Var(r) + EPS)
    db: float  # 10 * log10(ratio); -inf when the test gradient has zero variance


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


def _as_float32(x: np.ndarray, name: str) -> npt.NDArray[np.float32]:
    """Cast ``x`` to float32, refusing non-numeric and (after the cast) non-finite values."""
    try:
        arr = np.asarray(x)
    except ValueError as exc:  # ragged nested sequences
        raise InvalidInputError(f"{name} must be a numeric array: {exc}") from exc
    if arr.dtype.kind not in "biuf":
        raise InvalidInputError(f"{name} must be real numeric, got dtype {arr.dtype}")
    with np.errstate(over="ignore"):  # overflow is reported below as non-finite
        out = arr.astype(np.float32)
    if not np.all(np.isfinite(out)):
        raise InvalidInputError(f"{name} contains NaN or infinite values (or values too large for float32)")
    return out


def selection_relevance(test_grad: np.ndarray, train_grads: np.ndarray, solver: str = "paper") -> Relevance:
    """SRS of the selection ``train_grads: (k, d)`` for the test gradient ``test_grad: (d,)``.

    Both are cast to float32, as in the paper, and the arithmetic then runs in float64 on
    those values (no overflow or lost digits from tiny or huge gradients). The
    pseudo-inverse drops singular values below ``max(k, d) * eps(float32)`` times the
    largest: that is the ``torch.linalg.pinv`` default the authors ran in float32, and
    below it a singular value is float32 rounding noise, so a near-collinear selection
    gets the minimum-norm solution instead of that noise inverted into weights of ~1e6.
    ``weights`` are float64.
    """
    if solver not in SOLVERS:
        raise InvalidInputError(f"unknown solver {solver!r}; available solvers: {SOLVERS}")
    g32 = _as_float32(test_grad, "test_grad")
    a32 = _as_float32(train_grads, "train_grads")
    if g32.ndim != 1:
        raise InvalidInputError(f"test_grad must be 1-D (d,), got shape {g32.shape}")
    if a32.ndim != 2:
        raise InvalidInputError(f"train_grads must be 2-D (k, d), got shape {a32.shape}")
    g = g32.astype(np.float64)  # (d,)
    a = a32.astype(np.float64)  # (k, d)
    if g.shape[0] == 0:
        raise InvalidInputError("test_grad is empty: the gradient dimension d must be >= 1")
    if a.shape[0] == 0:
        raise InvalidInputError("train_grads is empty: select at least one example (k >= 1)")
    if a.shape[1] != g.shape[0]:
        raise InvalidInputError(
            f"train_grads has d={a.shape[1]} columns but test_grad has d={g.shape[0]}; "
            "both must be gradients w.r.t. the same parameters"
        )
    rtol = max(a.shape) * float(np.finfo(np.float32).eps)
    t_ls = np.linalg.pinv(a.T, rtol=rtol) @ g  # (k,)
    weights = project_onto_simplex(t_ls)  # (k,)
    r = g - a.T @ weights  # (d,)
    ratio = float(np.var(g)) / (float(np.var(r)) + EPS)
    db = 10.0 * math.log10(ratio) if ratio > 0 else -math.inf
    return Relevance(weights=weights, ratio=ratio, db=db)


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
    return 10.0 * math.log10(mean) if mean > 0 else -math.inf
