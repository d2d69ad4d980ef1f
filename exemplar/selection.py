"""Selection strategies: which k training examples to show for one test instance.

Pure functions on arrays (paper.md sections 2 and 4). Influence follows Koh & Liang's
sign convention: ``I < 0`` is helpful (up-weighting the example lowers the test loss),
``I > 0`` harmful. Every strategy returns an ``int64`` array of indices into its inputs,
in selection order.

Orderings (names in ``ORDERINGS``, ``order_by``): "most_influential" (``|I|``
descending), "least_influential" (``|I|`` ascending), "most_helpful" (``I`` ascending,
most negative first), "most_harmful" (``I`` descending). Each is a stable sort on a
score, best first (``_ordering_score``).

Strategies (names in ``STRATEGIES``):

- ``"topk"``: ``topk``, the first k under an ordering.
- ``"random"``: ``random_selection``, k distinct examples uniformly at random.
- ``"balanced"``: ``facility_location``, the paper's weighted facility location
  ("FL lambda") over the top-``pool_size`` pool, trading influence against coverage of
  the pool's gradient directions.
- ``"divine"``: ``divine``, DIVINE (Bhatt et al. 2021) as the paper re-implemented it:
  importance minus gamma times within-selection similarity, best gamma by spread.
- ``"aide"``: ``aide``, AIDE (Nematov et al. 2024): influence, similarity to the test
  gradient and facility-location coverage of the pool.
- ``"self"``: ``self_selection``, the test instance itself (a sanity check; only when
  the query is a training example).
- ``"reconstruct"``: ``reconstruct`` (ours, beyond the paper): greedy forward selection
  that maximises the selection relevance score itself, and a start from the pool's best
  simplex mixture, each refined by swaps.

The tests check each strategy against a direct loop transcription of its definition.
"""

import operator
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from exemplar.errors import InvalidInputError
from exemplar.relevance import (
    EPS,
    KKT_RTOL,
    SOLVERS,
    exact_simplex_weights,
    project_onto_simplex,
    selection_relevance,
    simplex_weights_gram,
)

STRATEGIES = ("topk", "random", "balanced", "divine", "aide", "self", "reconstruct")

ORDERINGS = ("most_influential", "least_influential", "most_helpful", "most_harmful")

TIE_RTOL = 1e-10
"""Greedy scores this close (relatively) to the best count as tied; the earliest wins.

Exact ties are common in facility location (two candidates that are each other's only
uncovered neighbour have equal gains), and rounding would otherwise break them by
summation order instead of by pool order. For scores of either sign (DIVINE, AIDE) the
band is ``TIE_RTOL`` times the largest ``|score|`` among the candidates still open.
"""

DIVINE_GAMMAS = tuple(float(x) for x in np.logspace(-4, 5, 20))
"""The paper's gamma grid for DIVINE, ``logspace(-4, 5, 20)``."""

RECONSTRUCT_SCREEN_RTOL = 1e-6
"""``reconstruct`` re-scores with ``selection_relevance`` every candidate whose screened
ratio is this close (relatively) to the best screened ratio, and lets those scores decide;
the screening agrees with ``selection_relevance`` to rounding (1e-9 or closer in the tests,
~1e-7 at worst on selections holding near-duplicates 1e-8 apart)."""

RECONSTRUCT_BATCH_MAX_CONDITION = 1e7
"""``reconstruct`` screens a whole step's candidates at once from Gram matrices (the normal
equations) only where the directions it solves in are certified better conditioned than this
(relative rounding of their weights then ~1e-8 at worst); any other candidate is screened alone."""

RECONSTRUCT_SWAP_SWEEPS = 2
"""Default number of local-search sweeps ``reconstruct`` runs after its greedy selection."""

RECONSTRUCT_SWAP_RTOL = 1e-9
"""A swap must raise the ratio by more than this (relatively): rounding never swaps."""


# ---------------------------------------------------------------- validation


def _int_at_least(value: int, minimum: int, kind: str, below: str) -> int:
    """``value`` as a Python int, refusing bools and non-integers (``kind``) and values below ``minimum`` (``below``)."""
    if isinstance(value, bool):
        raise InvalidInputError(f"{kind}, got {value!r}")
    try:
        out = operator.index(value)
    except TypeError as exc:
        raise InvalidInputError(f"{kind}, got {value!r}") from exc
    if out < minimum:
        raise InvalidInputError(f"{below}, got {out}")
    return out


def _positive_int(value: int, name: str) -> int:
    """``value`` as a Python int >= 1."""
    return _int_at_least(value, 1, f"{name} must be an integer >= 1", f"{name} must be >= 1")


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


def _grads_matrix(grads: np.ndarray, n: int) -> np.ndarray:
    """``grads: (n, d)`` checked for dtype and shape against ``n`` influence entries (not cast)."""
    g = np.asarray(grads)
    if g.dtype.kind not in "biuf":
        raise InvalidInputError(f"grads must be real numeric, got dtype {g.dtype}")
    if g.ndim != 2:
        raise InvalidInputError(f"grads must be 2-D (n, d), got shape {g.shape}")
    if g.shape[0] != n:
        raise InvalidInputError(
            f"grads has {g.shape[0]} rows but influence has {n} entries; they must describe the same examples"
        )
    if g.shape[1] == 0:
        raise InvalidInputError("grads has no columns: the gradient dimension d must be >= 1")
    return g


def _pool_grads(g: np.ndarray, pool: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
    """The pool's rows of ``g`` as float64; only they must be finite."""
    out = g[pool].astype(np.float64)  # (m, d)
    if not np.all(np.isfinite(out)):
        raise InvalidInputError("grads contains NaN or infinite values in the candidate pool")
    return out


def _check_ordering(ordering: str) -> str:
    if not isinstance(ordering, str) or ordering not in ORDERINGS:
        raise InvalidInputError(f"unknown ordering {ordering!r}; choose one of: {', '.join(ORDERINGS)}")
    return ordering


# ---------------------------------------------------------------- orderings


def _ordering_score(influence: npt.NDArray[np.float64], ordering: str) -> npt.NDArray[np.float64]:
    """The sort key of ``ordering``, larger = earlier: ``|I|``, ``-|I|``, ``-I`` or ``I``."""
    if ordering == "most_influential":
        return np.abs(influence)
    if ordering == "least_influential":
        return -np.abs(influence)
    if ordering == "most_helpful":
        return -influence
    return influence.copy()  # most_harmful


def _order(score: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """Indices by ``score`` descending; ties keep input order."""
    return np.argsort(-score, kind="stable").astype(np.int64, copy=False)


def order_by(influence: np.ndarray, ordering: str) -> npt.NDArray[np.int64]:
    """Indices of ``influence: (n,)`` under ``ordering`` (one of ``ORDERINGS``), best first.

    most_influential: ``|I|`` descending; least_influential: ``|I|`` ascending;
    most_helpful: ``I`` ascending (most negative first); most_harmful: ``I`` descending.
    Stable: ties keep input order.
    """
    x = _influence_vector(influence)
    return _order(_ordering_score(x, _check_ordering(ordering)))


def most_influential_order(influence: np.ndarray) -> npt.NDArray[np.int64]:
    """Indices of ``influence: (n,)`` by ``|I|`` descending; ties keep input order."""
    return order_by(influence, "most_influential")


def _rescale(x: npt.NDArray[np.float64], lo: float, hi: float) -> npt.NDArray[np.float64]:
    """``x: (m,)`` min-max rescaled to ``[lo, hi]``; all ``lo`` when ``x`` is constant.

    A span too large for float64 (``|x|`` near 1e308 of both signs) is computed on ``x/2``.
    """
    x_min, x_max = x.min(), x.max()
    if x_max == x_min:
        return np.full(x.shape, lo)
    with np.errstate(over="ignore"):
        span = x_max - x_min
    frac = (x - x_min) / span if np.isfinite(span) else (x / 2 - x_min / 2) / (x_max / 2 - x_min / 2)
    return np.asarray(lo + frac * (hi - lo), dtype=np.float64)


# ---------------------------------------------------------------- top-k and random


def topk(influence: np.ndarray, k: int, ordering: str = "most_influential") -> npt.NDArray[np.int64]:
    """The first ``min(k, n)`` indices of ``influence: (n,)`` under ``ordering``, best first."""
    k = _positive_int(k, "k")
    return order_by(influence, ordering)[:k]


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


def self_selection(query_row: int | None, k: int) -> npt.NDArray[np.int64]:
    """The "self" sanity check: the query itself, ``[query_row]``, when it is a training example.

    ``query_row`` is the query's row among the training examples, ``None`` when the query
    is not one of them (then InvalidInputError). One index whatever ``k >= 1`` is.
    """
    k = _positive_int(k, "k")
    if query_row is None:
        raise InvalidInputError(
            "the query is not a training example, so the 'self' strategy has nothing to show; "
            "choose another strategy or query with a training example"
        )
    message = "query_row must be a non-negative integer row index"
    return np.array([_int_at_least(query_row, 0, message, message)], dtype=np.int64)


# ---------------------------------------------------------------- similarities


def _unit_rows(grads: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Rows of ``grads: (m, d)`` scaled to unit norm; zero rows stay zero.

    Rows are first scaled by their largest absolute entry so the norms can neither
    overflow nor underflow.
    """
    scale = np.max(np.abs(grads), axis=1, keepdims=True)  # (m, 1)
    nonzero = scale[:, 0] > 0
    unit = np.zeros_like(grads)
    scaled = grads[nonzero] / scale[nonzero]
    unit[nonzero] = scaled / np.linalg.norm(scaled, axis=1, keepdims=True)
    return unit


def _cos_squared(grads: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Squared cosine similarities of the rows of ``grads: (m, d)``, shape ``(m, m)``.

    A zero row has similarity 0 to every row, itself included.
    """
    unit = _unit_rows(grads)
    cos = unit @ unit.T
    return np.asarray(cos * cos, dtype=np.float64)


def _cosine(grads: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Cosine similarities of the rows of ``grads: (m, d)``, shape ``(m, m)``, symmetric.

    Clipped to ``[-1, 1]``; a non-zero row has similarity exactly 1 to itself, a zero row
    0 to every row, itself included.
    """
    unit = _unit_rows(grads)
    cos = unit @ unit.T
    cos = np.clip((cos + cos.T) / 2.0, -1.0, 1.0)
    nonzero = np.any(unit != 0.0, axis=1)
    cos[np.diag_indices_from(cos)] = np.where(nonzero, 1.0, 0.0)
    return np.asarray(cos, dtype=np.float64)


def _first_best(score: npt.NDArray[np.float64], chosen: npt.NDArray[np.bool_]) -> int:
    """Earliest open candidate whose signed score is within the TIE_RTOL band of the best."""
    open_scores = score[~chosen]
    top = open_scores.max()
    band = TIE_RTOL * float(np.max(np.abs(open_scores)))
    return int(np.argmax(~chosen & (score >= top - band)))


# ---------------------------------------------------------------- facility location ("balanced")


def facility_location(
    influence: np.ndarray,
    grads: np.ndarray,
    k: int,
    *,
    lam: float,
    pool_size: int = 100,
    ordering: str = "most_influential",
) -> npt.NDArray[np.int64]:
    """Weighted facility location ("Balanced", FL lambda; paper.md section 4).

    ``influence: (n,)``, ``grads: (n, d)``. The pool ``C`` is the first ``pool_size`` of
    ``order_by(influence, ordering)`` (``m = len(C)``); each candidate costs minus its
    ordering score (most influential ``-|I|``, most helpful ``I``, most harmful ``-I``,
    least influential ``|I|``) min-max rescaled to ``[1, m]``, so the first in the
    ordering costs 1 (all cost 1 if equal).
    With ``s_ab = cos(g_a, g_b)^2`` and ``gain(a|S) = sum_b max(0, s_ab - max_{e in S} s_eb)``,
    the greedy adds ``argmax_a (gain(a|S) + 1)^lam / cost_a^(1 - lam)`` (ties, up to a
    relative ``TIE_RTOL``, to the earliest in pool order) until ``min(k, m)`` are
    selected. ``lam = 0`` is top-k under ``ordering``, ``lam = 1`` pure coverage of the pool.

    Every gain is re-evaluated at each step, vectorised over the pool (``O(k m^2)`` time,
    ``O(m^2)`` memory). The gain is submodular, so scores only fall as ``S`` grows and
    this exact greedy selects what the paper's lazy greedy selects. Only the pool's
    gradients are used, so only they must be finite. Returns indices into ``influence``
    and ``grads`` in greedy order.
    """
    inf = _influence_vector(influence)
    g = _grads_matrix(grads, inf.shape[0])
    k = _positive_int(k, "k")
    pool_size = _positive_int(pool_size, "pool_size")
    if isinstance(lam, bool) or not isinstance(lam, int | float | np.integer | np.floating):
        raise InvalidInputError(f"lam must be a number in [0, 1], got {lam!r}")
    lam = float(lam)
    if not 0.0 <= lam <= 1.0:  # also refuses NaN
        raise InvalidInputError(f"lam must be in [0, 1], got {lam}")
    score_all = _ordering_score(inf, _check_ordering(ordering))

    pool = _order(score_all)[:pool_size]  # (m,)
    m = pool.shape[0]
    if m == 0:
        return pool
    pool_grads = _pool_grads(g, pool)  # (m, d)

    cost = _rescale(-score_all[pool], 1.0, float(m))  # (m,), the first in the ordering costs 1
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


# ---------------------------------------------------------------- DIVINE


def _gamma_grid(gammas: npt.ArrayLike) -> npt.NDArray[np.float64]:
    try:
        arr = np.asarray(gammas, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"gammas must be a sequence of non-negative numbers: {exc}") from exc
    if arr.ndim != 1 or arr.size == 0:
        raise InvalidInputError(f"gammas must be a non-empty 1-D sequence of numbers, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise InvalidInputError("gammas must be finite and non-negative")
    return arr


def _mean_pairwise(dist: npt.NDArray[np.float64], picked: Sequence[int]) -> float:
    """Mean of ``dist[a, b]`` over ordered pairs ``a != b`` of ``picked``; 0 for one element.

    Summed over the sorted indices, so the same set gives the same value in any order.
    """
    idx = np.sort(np.asarray(picked, dtype=np.int64))
    size = idx.shape[0]
    if size < 2:
        return 0.0
    sub = dist[np.ix_(idx, idx)]
    return float((sub.sum() - np.trace(sub)) / (size * (size - 1)))


def divine(
    influence: np.ndarray,
    grads: np.ndarray,
    k: int,
    *,
    ordering: str = "most_influential",
    pool_size: int = 100,
    gammas: npt.ArrayLike = DIVINE_GAMMAS,
) -> npt.NDArray[np.int64]:
    """DIVINE (Bhatt et al. 2021) as the paper re-implemented it (paper.md section 4).

    ``influence: (n,)``, ``grads: (n, d)``. Pool ``C`` = the first ``pool_size`` of
    ``order_by(influence, ordering)`` (``m = len(C)``). Importance ``imp_a`` = the
    ordering's score (``|I|``, ``-|I|``, ``-I`` or ``I``, larger = earlier) min-max
    scaled to ``[0, 1]`` (all 0 if equal). ``D = 1 - cos`` is the cosine-distance matrix
    of the pool's gradients (a zero gradient has cosine 0 to every row, itself included;
    a non-zero one distance exactly 0 to itself) and ``S = max(D) - D``. For each
    ``gamma`` in ``gammas`` the greedy maximises
    ``F(T) = sum_{a in T} imp_a + gamma * (sum_{a,b in C} S_ab - sum_{a,b in T} S_ab)``
    (ordered pairs, ``a = b`` included) by adding the largest marginal gain
    ``imp_a - gamma * (2 sum_{b in T} S_ab + S_aa)`` (ties within ``TIE_RTOL`` to the
    earliest in pool order) until ``min(k, m)`` are selected. Of these selections the one
    with the largest mean pairwise cosine distance (over ``a != b``) is returned; ties,
    including every ``k = 1`` selection, keep the earliest gamma's. ``O(len(gammas) k m)``
    after the ``O(m^2 d)`` similarities.
    """
    inf = _influence_vector(influence)
    g = _grads_matrix(grads, inf.shape[0])
    k = _positive_int(k, "k")
    pool_size = _positive_int(pool_size, "pool_size")
    score_all = _ordering_score(inf, _check_ordering(ordering))
    grid = _gamma_grid(gammas)

    pool = _order(score_all)[:pool_size]  # (m,)
    m = pool.shape[0]
    if m == 0:
        return pool
    pool_grads = _pool_grads(g, pool)  # (m, d)
    importance = _rescale(score_all[pool], 0.0, 1.0)  # (m,)
    dist = np.clip(1.0 - _cosine(pool_grads), 0.0, 2.0)  # (m, m)
    sim = dist.max() - dist  # (m, m)
    self_sim = np.diag(sim).copy()  # (m,)

    best_order: list[int] = []
    best_spread = 0.0
    for gamma in grid:
        chosen = np.zeros(m, dtype=bool)
        within = np.zeros(m)  # within_a = sum_{b in T} S_ab
        order: list[int] = []
        for _ in range(min(k, m)):
            gains = importance - gamma * (2.0 * within + self_sim)
            pick = _first_best(gains, chosen)
            chosen[pick] = True
            order.append(pick)
            within += sim[pick]
        spread = _mean_pairwise(dist, order)
        if not best_order or spread > best_spread * (1.0 + TIE_RTOL):  # spreads are >= 0
            best_order, best_spread = order, spread
    return pool[np.asarray(best_order, dtype=np.int64)]


# ---------------------------------------------------------------- AIDE


def _test_vector(test_grad: np.ndarray, d: int) -> npt.NDArray[np.float64]:
    arr = np.asarray(test_grad)
    if arr.dtype.kind not in "biuf":
        raise InvalidInputError(f"test_grad must be real numeric, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise InvalidInputError(f"test_grad must be 1-D (d,), got shape {arr.shape}")
    if arr.shape[0] != d:
        raise InvalidInputError(
            f"test_grad has d={arr.shape[0]} but grads has d={d} columns; "
            "both must be gradients w.r.t. the same parameters"
        )
    out = arr.astype(np.float64)
    if not np.all(np.isfinite(out)):
        raise InvalidInputError("test_grad contains NaN or infinite values")
    return out


def aide(
    influence: np.ndarray,
    grads: np.ndarray,
    test_grad: np.ndarray,
    k: int,
    *,
    pool_size: int = 100,
) -> npt.NDArray[np.int64]:
    """AIDE (Nematov et al. 2024) as in paper.md section 4, with the real test gradient.

    ``influence: (n,)``, ``grads: (n, d)``, ``test_grad: (d,)``. Pool ``C`` = the first
    ``pool_size`` by ``|I|`` (``most_influential_order``). The greedy maximises
    ``F(S) = 0.2 sum_{a in S} imp_a + 0.8 sum_{a in S} cos(g_a, g_test) + gamma' FL(S)``
    with ``FL(S) = sum_{b in C} max_{e in S} cos(g_e, g_b)`` (plain cosine, so it may be
    negative; ``FL(empty) = 0``), ``gamma' = 0.5 (1 - 1/(k (k - 1)))`` for ``k > 1`` and
    1 for ``k = 1`` (``k`` as requested, even if the pool is smaller). ``imp_a`` is
    ``|I_a|`` min-max scaled to ``[0, 1]`` over the pool (all 0 if equal): our choice, so
    the influence term is on the scale of the cosines whatever the estimator's units; raw
    ``|I|`` would let any influence in the units of a large gradient swamp the rest.
    A zero gradient has cosine 0 to everything (itself included). Each step adds the
    largest marginal gain, ties within ``TIE_RTOL`` to the earliest in pool order, until
    ``min(k, m)`` are selected. ``O(k m^2)`` after the ``O(m^2 d)`` similarities.
    """
    inf = _influence_vector(influence)
    g = _grads_matrix(grads, inf.shape[0])
    test = _test_vector(test_grad, g.shape[1])
    k = _positive_int(k, "k")
    pool_size = _positive_int(pool_size, "pool_size")

    score_all = np.abs(inf)
    pool = _order(score_all)[:pool_size]  # (m,)
    m = pool.shape[0]
    if m == 0:
        return pool
    pool_grads = _pool_grads(g, pool)  # (m, d)
    importance = _rescale(score_all[pool], 0.0, 1.0)  # (m,)
    cos = _cosine(pool_grads)  # (m, m)
    to_test = np.clip(_unit_rows(pool_grads) @ _unit_rows(test[None, :])[0], -1.0, 1.0)  # (m,)
    gamma = 1.0 if k == 1 else 0.5 * (1.0 - 1.0 / (k * (k - 1)))
    base = 0.2 * importance + 0.8 * to_test  # (m,)

    chosen = np.zeros(m, dtype=bool)
    cover: npt.NDArray[np.float64] | None = None  # cover_b = max_{e in S} cos(g_e, g_b)
    order: list[int] = []
    for _ in range(min(k, m)):
        fl_gain = cos.sum(axis=1) if cover is None else np.maximum(0.0, cos - cover[None, :]).sum(axis=1)
        gains = base + gamma * fl_gain
        pick = _first_best(gains, chosen)
        chosen[pick] = True
        order.append(pick)
        cover = cos[pick].copy() if cover is None else np.maximum(cover, cos[pick])
    return pool[np.asarray(order, dtype=np.int64)]


# ---------------------------------------------------------------- reconstruct (ours)


def _float32_values(x: np.ndarray, name: str) -> npt.NDArray[np.float64]:
    """``x`` rounded to float32, as the relevance score sees it, then float64."""
    arr = np.asarray(x)
    if arr.dtype.kind not in "biuf":
        raise InvalidInputError(f"{name} must be real numeric, got dtype {arr.dtype}")
    with np.errstate(over="ignore"):
        out = arr.astype(np.float32)
    if not np.all(np.isfinite(out)):
        raise InvalidInputError(f"{name} contains NaN or infinite values (or values too large for float32)")
    return out.astype(np.float64)


def _project_rows_onto_simplex(v: npt.NDArray[np.float64]) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    """``project_onto_simplex`` of every row of ``v: (n, k)`` at once, and which rows it handled.

    The same sort-based threshold, evaluated the same way; a row whose clipped weights sum
    to 0 (entries so large that rounding wiped them out) is flagged False for the caller to
    score one at a time.
    """
    n, k = v.shape
    u = -np.sort(-v, axis=1)  # (n, k) descending
    j = np.arange(1, k + 1, dtype=np.float64)
    mean_top = np.cumsum(u, axis=1) / j  # (n, k)
    hit = (u - mean_top) + 1 / j > 0  # (n, k), True for j = 1..rho
    rho = k - np.argmax(hit[:, ::-1], axis=1)  # (n,)
    t = np.maximum((v - mean_top[np.arange(n), rho - 1][:, None]) + 1 / rho[:, None], 0.0)
    total = t.sum(axis=1)
    ok = total > 0
    return t / np.where(ok, total, 1.0)[:, None], ok


class _ReducedScorer:
    """The relevance ratio of any subset of a pool, in the pool's own coordinates.

    With ``M = [P.T, g, 1]: (d, m + 2)`` and its thin QR ``M = Q R`` (``Q`` orthonormal
    columns), every pool row, the test gradient and the all-ones vector are exact
    combinations of ``Q``'s columns (the columns of ``R``), so for a subset ``T`` and
    weights ``t`` the residual is ``r = Q e`` with ``e = h - C_T.T t``, its mean
    ``c1.e / d`` and ``d Var(r) = ||e - mean c1||^2`` (as ``1 = Q c1``). Both solvers
    only see ``A A^T`` and ``A g`` ("exact") or the singular values and vectors of ``A.T``
    ("paper"), which ``C_T`` shares with the rows of ``P``: the same weights at
    ``O(m k^2)`` per subset instead of ``O(d k^2)``.
    """

    def __init__(self, pool_grads: npt.NDArray[np.float64], g: npt.NDArray[np.float64], solver: str) -> None:
        m, d = pool_grads.shape
        stacked = np.column_stack([pool_grads.T, g, np.ones(d)])  # (d, m + 2)
        r = np.asarray(np.linalg.qr(stacked, mode="r"), dtype=np.float64)  # (min(d, m + 2), m + 2)
        self.coords = np.ascontiguousarray(r[:, :m].T)  # (m, K), row j = coordinates of pool row j
        self.h = r[:, m]  # (K,) coordinates of g
        self.ones = r[:, m + 1]  # (K,) coordinates of the all-ones vector
        self.d = d
        self.var_g = float(np.var(g))
        self.solver = solver
        self.gram = self.coords @ self.coords.T  # (m, m) = P P^T
        self.dots = self.coords @ self.h  # (m,) = P g
        self.sq = np.diag(self.gram).copy()  # (m,) squared row norms

    def ratio(self, subset: list[int]) -> float:
        """The ratio of one subset (pool positions)."""
        c_t = self.coords[subset]  # (k, K)
        if self.solver == "paper":
            rtol = max(len(subset), self.d) * float(np.finfo(np.float32).eps)
            weights = project_onto_simplex(np.linalg.pinv(c_t.T, rtol=rtol) @ self.h)
        else:
            weights = exact_simplex_weights(self.h, c_t)
        e = self.h - c_t.T @ weights  # (K,)
        mean = float(self.ones @ e) / self.d
        var_r = float(np.sum((e - mean * self.ones) ** 2)) / self.d
        return self.var_g / (var_r + EPS)

    def extensions(self, base: list[int], cands: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        """``ratio(base + [j])`` for every pool position ``j`` in ``cands: (n,)`` (none in ``base``).

        All candidates at once in the Gram form, from ``base``'s own solution: one bordered
        solve per candidate, ``O(|base|^2)`` each, or for the paper solver where its
        pseudo-inverse truncates, one batched eigendecomposition (``_paper_extensions``,
        ``_paper_eigen_solves``, ``_exact_extensions``). A candidate whose batched weights
        those cannot certify is scored alone by ``ratio``, so every value is ``ratio``'s up
        to rounding.
        """
        n = cands.shape[0]
        if not base:  # one example: weight 1 under either solver
            weights, ok = np.ones((n, 1)), np.ones(n, dtype=bool)
        elif self.solver == "paper":
            weights, ok = self._paper_extensions(base, cands)
        else:
            weights, ok = self._exact_extensions(base, cands)
        weights = np.where(ok[:, None], weights, 0.0)  # (n, s + 1): the base rows, then the candidate
        e = self.h[None, :] - weights[:, :-1] @ self.coords[base] - weights[:, -1:] * self.coords[cands]  # (n, K)
        mean = (e @ self.ones) / self.d  # (n,)
        var_r = np.sum((e - mean[:, None] * self.ones[None, :]) ** 2, axis=1) / self.d
        out = self.var_g / (var_r + EPS)
        for i in np.flatnonzero(~ok):
            out[i] = self.ratio([*base, int(cands[i])])
        return out

    def _paper_extensions(
        self, base: list[int], cands: npt.NDArray[np.int64]
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
        """Paper-solver weights of ``base + [j]`` (``base`` not empty) for each candidate, and which are certified.

        With ``M`` the Gram matrix of ``base + [j]`` (base block ``Q``, border ``q``, corner
        ``c``), ``pinv(A.T) g = M^{-1} A g`` when the pseudo-inverse drops no singular value,
        and ``M^{-1}`` follows from ``W = Q^{-1}``: ``u = W q``, ``sigma = c - q.u``. Certified
        when ``1 / ||M^{-1}||_F`` (a lower bound on ``M``'s smallest eigenvalue, from the
        block inverse) exceeds ``trace(M)`` (an upper bound on its largest) times both
        ``4 rtol^2`` (so the pseudo-inverse's cutoff at ``rtol`` times the largest singular
        value drops nothing) and ``1 / RECONSTRUCT_BATCH_MAX_CONDITION``.
        """
        s = len(base)
        idx = np.asarray(base, dtype=np.int64)
        rtol = max(s + 1, self.d) * float(np.finfo(np.float32).eps)
        floor = max(4.0 * rtol * rtol, 1.0 / RECONSTRUCT_BATCH_MAX_CONDITION)
        q_bb = self.gram[np.ix_(idx, idx)]  # (s, s)
        lam, vec = np.linalg.eigh(q_bb)
        if not lam[0] > floor * lam[-1]:  # the base alone is (nearly) truncated
            return self._project(*self._paper_eigen_solves(idx, cands, rtol))
        w = (vec / lam) @ vec.T  # (s, s) = Q^{-1}
        q = self.gram[np.ix_(idx, cands)]  # (s, n)
        u = w @ q  # (s, n)
        c = self.sq[cands]  # (n,)
        sigma = c - np.sum(q * u, axis=0)  # (n,) Schur complements
        t_base = w @ self.dots[base]  # (s,) the base's own least-squares weights
        uu = np.sum(u * u, axis=0)  # (n,)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            t_j = (self.dots[cands] - q.T @ t_base) / sigma  # (n,)
            frob2 = (
                float(np.sum(w * w)) + 2.0 * np.sum(u * (w @ u), axis=0) / sigma + (uu * uu + 2.0 * uu + 1.0) / sigma**2
            )  # (n,) ||M^{-1}||_F^2
            ok = (sigma > 0) & np.isfinite(frob2) & (frob2 > 0)
            ok &= 1.0 / np.sqrt(np.where(ok, frob2, 1.0)) > floor * (np.trace(q_bb) + c)
            t_ls = np.column_stack([(t_base[:, None] - u * t_j).T, t_j])  # (n, s + 1)
        rest = np.flatnonzero(~ok)
        t_ls[rest], ok[rest] = self._paper_eigen_solves(idx, cands[rest], rtol)
        return self._project(t_ls, ok)

    @staticmethod
    def _project(
        t_ls: npt.NDArray[np.float64], ok: npt.NDArray[np.bool_]
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
        """The simplex projections of the certified rows of ``t_ls: (n, s + 1)``, and which are usable."""
        weights, projected = _project_rows_onto_simplex(np.where(ok[:, None], t_ls, 0.0))
        return weights, ok & projected

    def _paper_eigen_solves(
        self, idx: npt.NDArray[np.int64], cands: npt.NDArray[np.int64], rtol: float
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
        """``pinv(A.T) g`` for ``A`` = the rows ``idx + [j]``, each candidate ``j``, and which are certified.

        From a batched eigendecomposition of the Gram matrices ``M = V diag(lam) V^T``:
        ``pinv(A.T) g = V diag(1/lam) V^T A g`` over the eigenvalues the pseudo-inverse keeps
        (``lam > rtol^2 lam_max``, singular values above ``rtol`` times the largest).
        Certified when no eigenvalue lies within 0.1% of that cutoff (or within 1000 times
        the Gram form's rounding, ``(s + 1) eps lam_max``) and every kept one is above
        ``lam_max / RECONSTRUCT_BATCH_MAX_CONDITION``: rounding in the Gram form then
        neither flips a cutoff decision nor blurs a kept direction.
        """
        rows = np.concatenate([np.broadcast_to(idx, (cands.shape[0], idx.shape[0])), cands[:, None]], axis=1)
        gram = self.gram[rows[:, :, None], rows[:, None, :]]  # (n, s + 1, s + 1)
        lam, vec = np.linalg.eigh(gram)  # ascending
        top = lam[:, -1:]  # (n, 1)
        cutoff = rtol * rtol * top
        keep = lam > cutoff
        band = np.maximum(1e-3 * cutoff, 1e3 * float(np.finfo(np.float64).eps) * lam.shape[1] * top)  # (n, 1)
        clear = (lam < cutoff - band) | ((lam > cutoff + band) & (lam > top / RECONSTRUCT_BATCH_MAX_CONDITION))
        ok = np.all(clear, axis=1) & (top[:, 0] > 0)
        inverse = np.divide(1.0, lam, out=np.zeros_like(lam), where=keep & ok[:, None])  # (n, s + 1)
        coef = np.einsum("nij,ni->nj", vec, self.dots[rows]) * inverse  # (n, s + 1) = diag(1/lam) V^T A g
        return np.einsum("nij,nj->ni", vec, coef), ok

    def _exact_extensions(
        self, base: list[int], cands: npt.NDArray[np.int64]
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
        """Exact-solver weights of ``base + [j]`` (``base`` not empty) for each candidate, and which are certified.

        From the base's optimum ``t`` (support ``F``): a candidate whose reduced gradient is
        not below ``-tol`` (the exact solver's KKT test) leaves ``t`` optimal. Otherwise the
        face ``F + [j]`` is solved by a bordered solve of ``F``'s KKT system (with ``Q``
        scaled to unit largest diagonal, as the solver does), and the result is certified a
        posteriori, however well conditioned the face: its weights are positive, its KKT
        residual is within ``tol`` and no other base row has a reduced gradient below
        ``-tol``, so it satisfies the exact solver's own optimality test.
        """
        n, s = cands.shape[0], len(base)
        idx = np.asarray(base, dtype=np.int64)
        weights = np.zeros((n, s + 1))
        ok = np.zeros(n, dtype=bool)
        q_bb = self.gram[np.ix_(idx, idx)]
        b_base = self.dots[idx]  # (s,)
        t = simplex_weights_gram(q_bb, b_base)  # (s,)
        c = self.sq[cands]  # (n,)
        dots = self.dots[cands]  # (n,)
        unit = float(np.max(np.diag(q_bb)))  # the base's largest diagonal; the solver scales by the largest
        tol = KKT_RTOL * np.maximum(np.maximum(unit, c), np.maximum(float(np.max(np.abs(b_base))), np.abs(dots)))
        grad_base = q_bb @ t - b_base  # (s,) half the objective's gradient
        mu = float(t @ grad_base)
        reduced = self.gram[np.ix_(cands, idx)] @ t - dots - mu  # (n,)
        same = reduced >= -tol
        weights[same, :s] = t
        ok[same] = True
        todo = np.flatnonzero(~same)
        face = np.flatnonzero(t > 0)
        f = face.shape[0]
        if todo.size == 0:
            return weights, ok
        if not unit > 0:  # the KKT system below is solved with Q / unit
            return weights, ok
        kkt = np.zeros((f + 1, f + 1))
        kkt[:f, :f] = q_bb[np.ix_(face, face)] / unit
        kkt[:f, f] = kkt[f, :f] = 1.0
        try:
            kkt_inv = np.linalg.inv(kkt)
        except np.linalg.LinAlgError:
            return weights, ok
        face_rows = idx[face]
        cand = cands[todo]
        border = np.vstack([self.gram[np.ix_(face_rows, cand)] / unit, np.ones((1, todo.size))])  # (f + 1, nt)
        rhs = np.append(self.dots[face_rows] / unit, 1.0)  # (f + 1,)
        x0 = kkt_inv @ rhs  # (f + 1,)
        u = kkt_inv @ border  # (f + 1, nt)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            sigma = c[todo] / unit - np.sum(border * u, axis=0)  # (nt,)
            z_j = (dots[todo] / unit - border.T @ x0) / sigma  # (nt,)
            x = x0[:, None] - u * z_j  # (f + 1, nt): face weights, then the multiplier nu / unit
            z_face, nu = x[:f], x[f] * unit
            grad_all = self.gram[np.ix_(idx, face_rows)] @ z_face + self.gram[np.ix_(idx, cand)] * z_j
            grad_all -= b_base[:, None]  # (s, nt) at the new point, for every base row
            grad_j = np.sum(self.gram[np.ix_(face_rows, cand)] * z_face, axis=0) + c[todo] * z_j - dots[todo]
            residual = np.maximum(np.max(np.abs(grad_all[face] + nu), axis=0), np.abs(grad_j + nu))  # (nt,)
            off = np.setdiff1d(np.arange(s), face)
            off_ok = np.all(grad_all[off] + nu >= -tol[todo], axis=0) if off.size else np.ones(todo.size, dtype=bool)
            good = (
                (sigma > 0)
                & np.all(z_face > 0, axis=0)
                & (z_j > 0)
                & (residual <= tol[todo])
                & off_ok
                & (np.abs(np.sum(z_face, axis=0) + z_j - 1.0) <= 1e-9)
            )
        rows = todo[good]
        total = np.sum(z_face[:, good], axis=0) + z_j[good]
        weights[np.ix_(rows, face)] = (z_face[:, good] / total).T
        weights[rows, s] = z_j[good] / total
        ok[rows] = True
        return weights, ok


def reconstruct(test_grad: np.ndarray, grads: np.ndarray, k: int, **options: Any) -> npt.NDArray[np.int64]:
    """The best of ``reconstruct_selections(test_grad, grads, k, **options)`` in these coordinates
    (its first); see there for the search and its options."""
    return reconstruct_selections(test_grad, grads, k, **options)[0]


def reconstruct_selections(
    test_grad: np.ndarray,
    grads: np.ndarray,
    k: int,
    *,
    solver: str = "exact",
    pool_size: int = 100,
    swap_sweeps: int = RECONSTRUCT_SWAP_SWEEPS,
    simplex_start: bool = True,
    beam_width: int = 0,
) -> list[npt.NDArray[np.int64]]:
    """Greedy forward selection on the relevance score itself, then swaps ("ours", beyond the paper).

    Returns the distinct selections the search ended on (each start before and after its
    swaps), best ratio in these coordinates first: a caller that scores in another space
    (the model's full gradients, ``exemplar.fullspace``) picks among them there, since a
    selection tuned on a projection overfits it.

    ``test_grad: (d,)``, ``grads: (n, d)`` (the candidates the caller retrieved). Pool =
    the union of the ``pool_size`` rows with the smallest Euclidean distance
    ``||g_a - test_grad||`` and the ``pool_size`` rows with the largest cosine to
    ``test_grad`` (zero rows have cosine 0; ties in row order), ordered by distance (ties
    in row order). Distances, cosines and scores use the float32-rounded values the score
    sees. The nearest rows reconstruct the test gradient on their own; the aligned rows
    point its way at any norm, and the simplex weights can shrink such a row towards the
    test gradient by mixing it with small ones.

    Up to three starts (the second only with ``simplex_start``, the third only with
    ``beam_width > 0``), each completed and refined the same way, and the best final ratio
    wins (ties to the earlier start):

    1. greedy from the empty selection;
    2. the pool rows with the largest weights in the exact simplex least-squares fit of
       the test gradient by the whole pool (``exact_simplex_weights``), at most
       ``min(k, m)`` of them, largest first (ties in pool order);
    3. beam search: starting from the empty selection, each level extends every kept
       selection by every unselected pool row and keeps the ``beam_width`` distinct
       selections with the best ratios (ties to the earlier-made), until ``min(k, m)``
       are selected; the best one starts the refinement. When ``beam_width`` is at least
       the number of ``j``-subsets of the pool for every ``j <= min(k, m)``, the beam
       holds every subset and this start is the exact optimum over the pool. Costs
       about ``beam_width`` times the greedy start; off in the service
       (``benchmarks/reconstruct_headroom.py`` measures what it would add).

    Completion: while fewer than ``min(k, m)`` are selected, add the pool row ``a``
    maximising ``selection_relevance(test_grad, grads[S + [a]], solver).ratio`` (ties
    within ``TIE_RTOL`` to the earliest in pool order). Refinement: up to ``swap_sweeps``
    sweeps of local search; for each position ``i`` of the selection in turn, the
    unselected pool row whose swap into position ``i`` gives the best ratio (ties to the
    earliest in pool order) replaces it if that ratio beats the current one by more than
    ``RECONSTRUCT_SWAP_RTOL``; the sweeps stop early when one changes nothing. Greedy
    alone can lose score as ``k`` grows under the "paper" solver (its pinv weights are
    projected onto the simplex, so an added example can hurt, and greedy must add one);
    the swaps undo such early choices at the final ``k``, and the second start reaches
    mixtures that greedy's first, single-example steps pass by.

    Greedy's first pick: a single example gets weight 1, so its residual is ``g - a`` and
    the ratio ``Var(g) / (Var(g - a) + EPS)`` is largest for the smallest
    ``Var(g - a) = ||g - a||^2 / d - mean(g - a)^2``, i.e. the nearest row in L2 once the
    constant offset ``mean(g - a)`` is removed (the score ignores offsets). That is the
    L2-nearest row when the residuals have no offset, as for large raw gradients, but
    not in general.

    For speed every step first screens all its candidates at once in the pool's
    coordinates (``_ReducedScorer.extensions``: each candidate's weights from one bordered
    solve on the current selection's Gram matrix, certified or else computed alone); every
    candidate within ``RECONSTRUCT_SCREEN_RTOL`` of the best screened ratio is then
    re-scored with ``selection_relevance`` itself, which decides (a swap step whose best
    screened ratio is below the current one by more than that re-scores nothing). A test
    gradient with zero variance scores 0 with every selection: the pool order is returned.
    """
    k = _positive_int(k, "k")
    pool_size = _positive_int(pool_size, "pool_size")
    swap_sweeps = _int_at_least(
        swap_sweeps, 0, "swap_sweeps must be a non-negative integer", "swap_sweeps must be >= 0"
    )
    beam_width = _int_at_least(beam_width, 0, "beam_width must be a non-negative integer", "beam_width must be >= 0")
    if not isinstance(solver, str) or solver not in SOLVERS:
        raise InvalidInputError(f"unknown solver {solver!r}; choose one of: {', '.join(SOLVERS)}")
    g = _float32_values(test_grad, "test_grad")
    if g.ndim != 1 or g.shape[0] == 0:
        raise InvalidInputError(f"test_grad must be a non-empty 1-D vector (d,), got shape {g.shape}")
    a = _float32_values(grads, "grads")
    if a.ndim != 2:
        raise InvalidInputError(f"grads must be 2-D (n, d), got shape {a.shape}")
    if a.shape[1] != g.shape[0]:
        raise InvalidInputError(
            f"grads has d={a.shape[1]} columns but test_grad has d={g.shape[0]}; "
            "both must be gradients w.r.t. the same parameters"
        )
    norms = np.sqrt(np.sum(a * a, axis=1)) * float(np.sqrt(g @ g))  # (n,) |a| |g|
    cos = np.divide(a @ g, norms, out=np.zeros(a.shape[0]), where=norms > 0)  # (n,), 0 for zero rows
    dist2 = np.sum((a - g[None, :]) ** 2, axis=1)  # (n,)
    members = np.union1d(np.argsort(dist2, kind="stable")[:pool_size], np.argsort(-cos, kind="stable")[:pool_size])
    pool = members[np.argsort(dist2[members], kind="stable")].astype(np.int64)  # (m,) by distance, ties by row
    m = pool.shape[0]
    steps = min(k, m)
    if m == 0 or float(np.var(g)) == 0.0:
        return [pool[:steps]]

    grads_in = np.asarray(grads)
    scorer = _ReducedScorer(a[pool], g, solver)

    def scored(subset: list[int]) -> float:
        """The ratio of ``subset`` (pool positions) by ``selection_relevance`` itself."""
        return selection_relevance(test_grad, grads_in[pool[subset]], solver=solver).ratio

    def best_of(subsets: list[list[int]], screened: npt.NDArray[np.float64]) -> tuple[int, float]:
        """Index into ``subsets`` (pool positions) of the best ratio (ties to the earliest), and that
        ratio, given their ``screened`` ratios: the near-best are re-scored and decide."""
        keep = np.flatnonzero(screened >= screened.max() * (1.0 - RECONSTRUCT_SCREEN_RTOL))
        ratios = np.array([scored(subsets[i]) for i in keep])
        best = int(np.argmax(ratios >= ratios.max() * (1.0 - TIE_RTOL)))
        return int(keep[best]), float(ratios[best])

    ends: list[tuple[list[int], float]] = []  # every start's selection before and after its swaps

    def improve(order: list[int]) -> tuple[list[int], float]:
        """Greedy additions from ``order`` until ``steps`` are selected, then up to ``swap_sweeps`` swap sweeps."""
        order = list(order)
        ratio = scored(order) if order else 0.0
        while len(order) < steps:
            open_idx = np.setdiff1d(np.arange(m), order)
            best, ratio = best_of([[*order, int(j)] for j in open_idx], scorer.extensions(order, open_idx))
            order.append(int(open_idx[best]))
        ends.append((list(order), ratio))
        chosen = np.zeros(m, dtype=bool)
        chosen[order] = True
        for _ in range(swap_sweeps):
            swapped = False
            for i in range(len(order)):
                open_idx = np.flatnonzero(~chosen)
                if open_idx.size == 0:
                    break
                screened = scorer.extensions(order[:i] + order[i + 1 :], open_idx)
                if screened.max() < ratio * (1.0 - RECONSTRUCT_SCREEN_RTOL):
                    continue  # no swap here comes near the current ratio: nothing to re-score
                best, new_ratio = best_of([[*order[:i], int(j), *order[i + 1 :]] for j in open_idx], screened)
                if new_ratio > ratio * (1.0 + RECONSTRUCT_SWAP_RTOL):
                    chosen[order[i]], chosen[open_idx[best]] = False, True
                    order[i], ratio, swapped = int(open_idx[best]), new_ratio, True
            if not swapped:
                break
        ends.append((list(order), ratio))
        return order, ratio

    order, ratio = improve([])
    if simplex_start:
        weights = exact_simplex_weights(g, a[pool])  # (m,) the best mixture of the whole pool
        support = np.flatnonzero(weights > 0)
        seeded, seeded_ratio = improve([int(j) for j in support[np.argsort(-weights[support], kind="stable")][:steps]])
        if seeded_ratio > ratio * (1.0 + RECONSTRUCT_SWAP_RTOL):
            order, ratio = seeded, seeded_ratio
    if beam_width > 0:
        beam: list[list[int]] = [[]]
        for _ in range(steps):
            made: dict[frozenset[int], tuple[list[int], float]] = {}  # distinct selections, in the order made
            for sel in beam:
                open_idx = np.setdiff1d(np.arange(m), sel)
                for j, screened_ratio in zip(open_idx, scorer.extensions(sel, open_idx), strict=True):
                    made.setdefault(frozenset([*sel, int(j)]), ([*sel, int(j)], float(screened_ratio)))
            extended = [sel for sel, _ in made.values()]
            ratios = np.array([r for _, r in made.values()])
            kept = np.argsort(-ratios, kind="stable")[:beam_width]
            beam = [extended[i] for i in kept]
        beamed, beamed_ratio = improve(beam[best_of(beam, ratios[kept])[0]])
        if beamed_ratio > ratio * (1.0 + RECONSTRUCT_SWAP_RTOL):
            order, ratio = beamed, beamed_ratio
    others: dict[frozenset[int], tuple[list[int], float]] = {}
    for sel, sel_ratio in ends:
        if frozenset(sel) != frozenset(order):
            others.setdefault(frozenset(sel), (sel, sel_ratio))
    ranked = sorted(others.values(), key=lambda e: -e[1])  # stable: ties keep the order made
    return [pool[np.asarray(sel, dtype=np.int64)] for sel in [order, *(sel for sel, _ in ranked)]]
