"""Selection strategies: which k training examples to show for one test instance.

Pure functions on arrays (paper.md sections 2 and 4). Influence follows Koh & Liang's
sign convention: ``I < 0`` is helpful (up-weighting the example lowers the test loss),
``I > 0`` harmful; "most influential" means largest ``|I|``. Every strategy returns an
``int64`` array of indices into its inputs, in selection order.

Strategies (names in ``STRATEGIES``):

- ``"topk"``: ``topk``, the k most influential examples.
- ``"random"``: ``random_selection``, k distinct examples uniformly at random.
- ``"balanced"``: ``facility_location``, the paper's weighted facility location
  ("FL lambda") over the top-``pool_size`` pool, trading influence against coverage of
  the pool's gradient directions.
"""

import operator

import numpy as np
import numpy.typing as npt

from exemplar.errors import InvalidInputError

STRATEGIES = ("topk", "random", "balanced")

TIE_RTOL = 1e-10
"""Greedy scores this close (relatively) to the best count as tied; the earliest wins.

Exact ties are common in facility location (two candidates that are each other's only
uncovered neighbour have equal gains), and rounding would otherwise break them by
summation order instead of by pool order.
"""


def _positive_int(value: int, name: str) -> int:
    """``value`` as a Python int, refusing bools, non-integers and values below 1."""
    if isinstance(value, bool):
        raise InvalidInputError(f"{name} must be an integer >= 1, got {value!r}")
    try:
        out = operator.index(value)
    except TypeError as exc:
        raise InvalidInputError(f"{name} must be an integer >= 1, got {value!r}") from exc
    if out < 1:
        raise InvalidInputError(f"{name} must be >= 1, got {out}")
    return out


def _influence_vector(influence: np.ndarray) -> npt.NDArray[np.float64]:
    """``influence: (n,)`` as finite float64, or InvalidInputError."""
    arr = np.asarray(influence)
    if arr.dtype.kind not in "biuf":
        raise InvalidInputError(f"influence must be real numeric, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise InvalidInputError(f"influence must be 1-D (n,), got shape {arr.shape}")
    out = arr.astype(np.float64)
    if not np.all(np.isfinite(out)):
        raise InvalidInputError("influence contains NaN or infinite values")
    return out


def most_influential_order(influence: np.ndarray) -> npt.NDArray[np.int64]:
    """Indices of ``influence: (n,)`` by ``|I|`` descending; ties keep input order."""
    x = _influence_vector(influence)
    return np.argsort(-np.abs(x), kind="stable").astype(np.int64, copy=False)


def topk(influence: np.ndarray, k: int) -> npt.NDArray[np.int64]:
    """The ``min(k, n)`` most influential indices of ``influence: (n,)``, most first."""
    k = _positive_int(k, "k")
    return most_influential_order(influence)[:k]


def random_selection(n: int, k: int, seed: int) -> npt.NDArray[np.int64]:
    """``min(k, n)`` distinct indices drawn uniformly from ``range(n)``, reproducible by seed."""
    k = _positive_int(k, "k")
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
        raise InvalidInputError(f"n must be a non-negative integer, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise InvalidInputError(f"seed must be a non-negative integer, got {seed!r}")
    rng = np.random.default_rng(int(seed))
    picked = rng.choice(int(n), size=min(k, int(n)), replace=False)
    return np.asarray(picked, dtype=np.int64)


def _cos_squared(grads: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Squared cosine similarities of the rows of ``grads: (m, d)``, shape ``(m, m)``.

    A zero row has similarity 0 to every row, itself included. Rows are first scaled by
    their largest absolute entry so the norms can neither overflow nor underflow.
    """
    scale = np.max(np.abs(grads), axis=1, keepdims=True)  # (m, 1)
    nonzero = scale[:, 0] > 0
    unit = np.zeros_like(grads)
    scaled = grads[nonzero] / scale[nonzero]
    unit[nonzero] = scaled / np.linalg.norm(scaled, axis=1, keepdims=True)
    cos = unit @ unit.T
    return np.asarray(cos * cos, dtype=np.float64)


def facility_location(
    influence: np.ndarray,
    grads: np.ndarray,
    k: int,
    *,
    lam: float,
    pool_size: int = 100,
) -> npt.NDArray[np.int64]:
    """Weighted facility location ("Balanced", FL lambda; paper.md section 4).

    ``influence: (n,)``, ``grads: (n, d)``. The pool ``C`` is the first ``pool_size`` of
    ``most_influential_order`` (``m = len(C)``); each candidate costs ``-|I_a|``
    min-max rescaled to ``[1, m]`` (the most influential costs 1; all cost 1 if equal).
    With ``s_ab = cos(g_a, g_b)^2`` and ``gain(a|S) = sum_b max(0, s_ab - max_{e in S} s_eb)``,
    the greedy adds ``argmax_a (gain(a|S) + 1)^lam / cost_a^(1 - lam)`` (ties, up to a
    relative ``TIE_RTOL``, to the earliest in pool order) until ``min(k, m)`` are
    selected. ``lam = 0`` is top-k, ``lam = 1`` pure coverage of the pool.

    Every gain is re-evaluated at each step, vectorised over the pool (``O(k m^2)`` time,
    ``O(m^2)`` memory). The gain is submodular, so scores only fall as ``S`` grows and
    this exact greedy selects what the paper's lazy greedy selects. Only the pool's
    gradients are used, so only they must be finite. Returns indices into ``influence``
    and ``grads`` in greedy order.
    """
    inf = _influence_vector(influence)
    g = np.asarray(grads)
    if g.dtype.kind not in "biuf":
        raise InvalidInputError(f"grads must be real numeric, got dtype {g.dtype}")
    if g.ndim != 2:
        raise InvalidInputError(f"grads must be 2-D (n, d), got shape {g.shape}")
    if g.shape[0] != inf.shape[0]:
        raise InvalidInputError(
            f"grads has {g.shape[0]} rows but influence has {inf.shape[0]} entries; "
            "they must describe the same examples"
        )
    if g.shape[1] == 0:
        raise InvalidInputError("grads has no columns: the gradient dimension d must be >= 1")
    k = _positive_int(k, "k")
    pool_size = _positive_int(pool_size, "pool_size")
    if isinstance(lam, bool) or not isinstance(lam, int | float | np.integer | np.floating):
        raise InvalidInputError(f"lam must be a number in [0, 1], got {lam!r}")
    lam = float(lam)
    if not 0.0 <= lam <= 1.0:  # also refuses NaN
        raise InvalidInputError(f"lam must be in [0, 1], got {lam}")

    pool = np.argsort(-np.abs(inf), kind="stable")[:pool_size].astype(np.int64)  # (m,)
    m = pool.shape[0]
    if m == 0:
        return pool
    pool_grads = g[pool].astype(np.float64)  # (m, d)
    if not np.all(np.isfinite(pool_grads)):
        raise InvalidInputError("grads contains NaN or infinite values in the candidate pool")

    c = -np.abs(inf[pool])  # (m,); both ends <= 0, so the differences cannot overflow
    c_min, c_max = c.min(), c.max()
    cost = np.ones(m) if c_max == c_min else 1.0 + (c - c_min) / (c_max - c_min) * (m - 1)
    cost_term = cost ** (1.0 - lam)  # (m,)

    sim = _cos_squared(pool_grads)  # (m, m)
    cur = np.zeros(m)  # cur_b = max_{e in S} s_eb, 0 for the empty S
    chosen = np.zeros(m, dtype=bool)
    order: list[int] = []
    for _ in range(min(k, m)):
        gains = np.maximum(0.0, sim - cur[None, :]).sum(axis=1)  # (m,)
        score = (gains + 1.0) ** lam / cost_term
        score[chosen] = -np.inf
        best = int(np.argmax(score >= score.max() * (1.0 - TIE_RTOL)))
        chosen[best] = True
        order.append(best)
        cur = np.maximum(cur, sim[best])
    return pool[np.asarray(order, dtype=np.int64)]
