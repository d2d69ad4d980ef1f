"""Rankings: orderings of the candidates by influence, and the strategies that only rank.

The candidate pool of the influence-based strategies is ``retrieve``: the top ``m`` rows of
the store under an ordering. Orderings (names in ``ORDERINGS``, ``order_by``): "most_influential" (``|I|``
descending), "least_influential" (``|I|`` ascending), "most_helpful" (``I`` ascending,
most negative first), "most_harmful" (``I`` descending). Each is a stable sort on a
score, best first (``ordering_score``).

Strategies:

- ``"topk"`` (``TOPK``): ``topk``, the first k candidates under an ordering.
- ``"random"`` (``RANDOM``): ``random_selection``, k distinct examples uniformly at random.
- ``"self"`` (``SELF``): ``self_selection``, the test instance itself (a sanity check; only
  when the query is a training example).

The tests check each against a direct loop transcription of its definition.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from exemplar.errors import InvalidInputError
from exemplar.estimators import Estimator, Query
from exemplar.search import DEFAULT_PRESET
from exemplar.store import GradientStore
from exemplar.strategies.base import Direct, FromPool, influence_vector, int_at_least, positive_int

ORDERINGS = ("most_influential", "least_influential", "most_helpful", "most_harmful")


def check_ordering(ordering: str) -> str:
    if not isinstance(ordering, str) or ordering not in ORDERINGS:
        raise InvalidInputError(f"unknown ordering {ordering!r}; choose one of: {', '.join(ORDERINGS)}")
    return ordering


def ordering_score(influence: npt.NDArray[np.float64], ordering: str) -> npt.NDArray[np.float64]:
    """The sort key of ``ordering``, larger = earlier: ``|I|``, ``-|I|``, ``-I`` or ``I``."""
    if ordering == "most_influential":
        return np.abs(influence)
    if ordering == "least_influential":
        return -np.abs(influence)
    if ordering == "most_helpful":
        return -influence
    return influence.copy()  # most_harmful


def order_desc(score: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """Indices by ``score`` descending; ties keep input order."""
    return np.argsort(-score, kind="stable").astype(np.int64, copy=False)


def order_by(influence: np.ndarray, ordering: str) -> npt.NDArray[np.int64]:
    """Indices of ``influence: (n,)`` under ``ordering`` (one of ``ORDERINGS``), best first.

    most_influential: ``|I|`` descending; least_influential: ``|I|`` ascending;
    most_helpful: ``I`` ascending (most negative first); most_harmful: ``I`` descending.
    Stable: ties keep input order.
    """
    x = influence_vector(influence)
    return order_desc(ordering_score(x, check_ordering(ordering)))


def most_influential_order(influence: np.ndarray) -> npt.NDArray[np.int64]:
    """Indices of ``influence: (n,)`` by ``|I|`` descending; ties keep input order."""
    return order_by(influence, "most_influential")


def rescale(x: npt.NDArray[np.float64], lo: float, hi: float) -> npt.NDArray[np.float64]:
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


def retrieve(
    store: GradientStore, estimator: Estimator, query: Query, ordering: str, m: int, preset: str = DEFAULT_PRESET
) -> tuple[np.ndarray, np.ndarray]:
    """The candidate pool: the top-`m` rows of `store` under `ordering` and their exact influence,
    in that order.

    Linear estimators search the index (`preset`: its effort, for approximate index types);
    whatever rows it finds are re-scored exactly here before they are ranked. Other estimators,
    and "least_influential" (which an inner-product index cannot return), scan every row.
    """
    q = estimator.search_vector(query)
    if q is not None and ordering != "least_influential":
        parts = []
        if ordering in ("most_influential", "most_helpful"):  # largest <v, q>: most negative I
            parts.append(store.search(q, m, preset)[1])
        if ordering in ("most_influential", "most_harmful"):  # largest <v, -q>: most positive I
            parts.append(store.search(-q, m, preset)[1])
        rows = np.unique(np.concatenate(parts))
        influence = estimator.influence(store, query, rows)
    else:
        influence = estimator.scan(store, query)
        rows = np.arange(store.n, dtype=np.int64)
    order = order_by(influence, ordering)[:m]
    return rows[order], np.asarray(influence[order], dtype=np.float64)


# ---------------------------------------------------------------- top-k, random, self


def topk(influence: np.ndarray, k: int, ordering: str = "most_influential") -> npt.NDArray[np.int64]:
    """The first ``min(k, n)`` indices of ``influence: (n,)`` under ``ordering``, best first."""
    k = positive_int(k, "k")
    return order_by(influence, ordering)[:k]


def random_selection(n: int, k: int, seed: int) -> npt.NDArray[np.int64]:
    """``min(k, n)`` distinct indices drawn uniformly from ``range(n)``, reproducible by seed."""
    k = positive_int(k, "k")
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
    k = positive_int(k, "k")
    if query_row is None:
        raise InvalidInputError(
            "the query is not a training example, so the 'self' strategy has nothing to show; "
            "choose another strategy or query with a training example"
        )
    message = "query_row must be a non-negative integer row index"
    return np.array([int_at_least(query_row, 0, message, message)], dtype=np.int64)


TOPK = FromPool(
    "topk",
    "top-k",
    "The k most influential training examples.",
    lambda ctx, influence, _: topk(influence, ctx.k, ordering=ctx.ordering),
)


RANDOM = Direct(
    "random",
    "random",
    "k random training examples: a reference point.",
    lambda ctx: random_selection(ctx.store.n, ctx.k, ctx.seed),
)
SELF = Direct(
    "self",
    "self",
    "The query itself, when it is a training example (a sanity check).",
    lambda ctx: self_selection(ctx.find_row(), ctx.k),
    compared=False,  # only for queries that are training examples
)
