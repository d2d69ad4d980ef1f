"""Greedy strategies over the candidate pool (paper.md section 4): each trades the candidates'
influence against how well the selection covers the pool's gradient directions.

- ``"balanced"`` (``BALANCED``): ``facility_location``, the paper's weighted facility location
  ("FL lambda") over the top-``pool_size`` pool.
- ``"divine"`` (``DIVINE``): ``divine``, DIVINE (Bhatt et al. 2021) as the paper re-implemented
  it: importance minus gamma times within-selection similarity, best gamma by spread.
- ``"aide"`` (``AIDE``): ``aide``, AIDE (Nematov et al. 2024): influence, similarity to the test
  gradient and facility-location coverage of the pool.

Pure functions on arrays; the tests check each against a direct loop transcription of its
definition.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from exemplar.errors import InvalidInputError
from exemplar.strategies.base import (
    TIE_RTOL,
    FromPool,
    checked_pool_grads,
    grads_matrix,
    influence_vector,
    positive_int,
)
from exemplar.strategies.ranking import check_ordering, order_desc, ordering_score, rescale
from exemplar.threads import checkpoint, products

DIVINE_GAMMAS = tuple(float(x) for x in np.logspace(-4, 5, 20))
"""The paper's gamma grid for DIVINE, ``logspace(-4, 5, 20)``."""

# ---------------------------------------------------------------- similarities


def unit_rows(grads: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
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
    unit = unit_rows(grads)
    cos = products(unit)
    return np.asarray(cos * cos, dtype=np.float64)


def _cosine(grads: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Cosine similarities of the rows of ``grads: (m, d)``, shape ``(m, m)``, symmetric.

    Clipped to ``[-1, 1]``; a non-zero row has similarity exactly 1 to itself, a zero row
    0 to every row, itself included.
    """
    unit = unit_rows(grads)
    cos = products(unit)
    cos = np.clip((cos + cos.T) / 2.0, -1.0, 1.0)
    nonzero = np.any(unit != 0.0, axis=1)
    cos[np.diag_indices_from(cos)] = np.where(nonzero, 1.0, 0.0)
    return np.asarray(cos, dtype=np.float64)


def first_best(score: npt.NDArray[np.float64], chosen: npt.NDArray[np.bool_]) -> int:
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
    inf = influence_vector(influence)
    g = grads_matrix(grads, inf.shape[0])
    k = positive_int(k, "k")
    pool_size = positive_int(pool_size, "pool_size")
    if isinstance(lam, bool) or not isinstance(lam, int | float | np.integer | np.floating):
        raise InvalidInputError(f"lam must be a number in [0, 1], got {lam!r}")
    lam = float(lam)
    if not 0.0 <= lam <= 1.0:  # also refuses NaN
        raise InvalidInputError(f"lam must be in [0, 1], got {lam}")
    score_all = ordering_score(inf, check_ordering(ordering))

    pool = order_desc(score_all)[:pool_size]  # (m,)
    m = pool.shape[0]
    if m == 0:
        return pool
    pool_grads = checked_pool_grads(g, pool)  # (m, d)

    cost = rescale(-score_all[pool], 1.0, float(m))  # (m,), the first in the ordering costs 1
    cost_term = cost ** (1.0 - lam)  # (m,)

    sim = _cos_squared(pool_grads)  # (m, m)
    cur = np.zeros(m)  # cur_b = max_{e in S} s_eb, 0 for the empty S
    chosen = np.zeros(m, dtype=bool)
    order: list[int] = []
    for _ in range(min(k, m)):
        checkpoint()  # one greedy step over the pool at a time (exemplar.threads.Priority)
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
    inf = influence_vector(influence)
    g = grads_matrix(grads, inf.shape[0])
    k = positive_int(k, "k")
    pool_size = positive_int(pool_size, "pool_size")
    score_all = ordering_score(inf, check_ordering(ordering))
    grid = _gamma_grid(gammas)

    pool = order_desc(score_all)[:pool_size]  # (m,)
    m = pool.shape[0]
    if m == 0:
        return pool
    pool_grads = checked_pool_grads(g, pool)  # (m, d)
    importance = rescale(score_all[pool], 0.0, 1.0)  # (m,)
    dist = np.clip(1.0 - _cosine(pool_grads), 0.0, 2.0)  # (m, m)
    sim = dist.max() - dist  # (m, m)
    self_sim = np.diag(sim).copy()  # (m,)

    best_order: list[int] = []
    best_spread = 0.0
    for gamma in grid:
        checkpoint()  # one gamma's greedy steps at a time (exemplar.threads.Priority)
        chosen = np.zeros(m, dtype=bool)
        within = np.zeros(m)  # within_a = sum_{b in T} S_ab
        order: list[int] = []
        for _ in range(min(k, m)):
            gains = importance - gamma * (2.0 * within + self_sim)
            pick = first_best(gains, chosen)
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
    inf = influence_vector(influence)
    g = grads_matrix(grads, inf.shape[0])
    test = _test_vector(test_grad, g.shape[1])
    k = positive_int(k, "k")
    pool_size = positive_int(pool_size, "pool_size")

    score_all = np.abs(inf)
    pool = order_desc(score_all)[:pool_size]  # (m,)
    m = pool.shape[0]
    if m == 0:
        return pool
    pool_grads = checked_pool_grads(g, pool)  # (m, d)
    importance = rescale(score_all[pool], 0.0, 1.0)  # (m,)
    cos = _cosine(pool_grads)  # (m, m)
    to_test = np.clip(unit_rows(pool_grads) @ unit_rows(test[None, :])[0], -1.0, 1.0)  # (m,)
    gamma = 1.0 if k == 1 else 0.5 * (1.0 - 1.0 / (k * (k - 1)))
    base = 0.2 * importance + 0.8 * to_test  # (m,)

    chosen = np.zeros(m, dtype=bool)
    cover: npt.NDArray[np.float64] | None = None  # cover_b = max_{e in S} cos(g_e, g_b)
    order: list[int] = []
    for _ in range(min(k, m)):
        checkpoint()  # one greedy step over the pool at a time (exemplar.threads.Priority)
        fl_gain = cos.sum(axis=1) if cover is None else np.maximum(0.0, cos - cover[None, :]).sum(axis=1)
        gains = base + gamma * fl_gain
        pick = first_best(gains, chosen)
        chosen[pick] = True
        order.append(pick)
        cover = cos[pick].copy() if cover is None else np.maximum(cover, cos[pick])
    return pool[np.asarray(order, dtype=np.int64)]


PAIRWISE_S = 5e-9
"""Seconds per (pool pair x selection step) of the greedy strategies over pairwise similarities
(balanced, AIDE, DIVINE: 0.4-0.9 s at m = 2,000, k = 50 on the reference machine)."""


def pairwise_work(m: int, k: int, solver: str) -> float:
    """Estimated seconds of a greedy selection over pairwise similarities of m candidates (`Strategy.work`)."""
    return PAIRWISE_S * m * m * k


BALANCED = FromPool(
    "balanced",
    "balanced",
    "Influential examples that also cover the different reasons among the candidates (the paper's method).",
    lambda ctx, influence, rows: facility_location(
        influence, ctx.store.vectors_at(rows), ctx.k, lam=ctx.lam, pool_size=ctx.m, ordering=ctx.ordering
    ),
    cost=pairwise_work,
)
DIVINE = FromPool(
    "divine",
    "DIVINE",
    "Baseline (DIVINE): influential and diverse examples.",
    lambda ctx, influence, rows: divine(
        influence, ctx.store.vectors_at(rows), ctx.k, ordering=ctx.ordering, pool_size=ctx.m
    ),
    cost=pairwise_work,
)
AIDE = FromPool(
    "aide",
    "AIDE",
    "Baseline (AIDE): influence, similarity to the query and coverage.",
    lambda ctx, influence, rows: aide(influence, ctx.store.vectors_at(rows), ctx.query.grad, ctx.k, pool_size=ctx.m),
    cost=pairwise_work,
)
