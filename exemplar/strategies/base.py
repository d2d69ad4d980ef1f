"""What every selection strategy shares: the `Strategy` interface, the `SelectionContext` a
strategy reads for one request, the `Proposal` it returns, and the input checks of the pure
selection functions.

Influence follows Koh & Liang's sign convention: ``I < 0`` is helpful (up-weighting the
example lowers the test loss), ``I > 0`` harmful. Every pure selection function returns an
``int64`` array of indices into its inputs, in selection order.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from exemplar.errors import InvalidInputError
from exemplar.estimators import Estimator, Query
from exemplar.search import DEFAULT_PRESET
from exemplar.store import GradientStore

TIE_RTOL = 1e-10
"""Greedy scores this close (relatively) to the best count as tied; the earliest wins.

Exact ties are common in facility location (two candidates that are each other's only
uncovered neighbour have equal gains), and rounding would otherwise break them by
summation order instead of by pool order. For scores of either sign (DIVINE, AIDE) the
band is ``TIE_RTOL`` times the largest ``|score|`` among the candidates still open.
"""


@dataclass(frozen=True)
class Proposal:
    """A selection one strategy proposes: `rows` of the store in selection order and their influence."""

    strategy: str
    rows: np.ndarray
    influence: np.ndarray


@dataclass
class SelectionContext:
    """What a strategy sees of one request: the query, the store, the request's estimator and
    the options a strategy may use. Built by `exemplar.explain.Explainer` per (query, options)."""

    store: GradientStore
    estimator: Estimator
    query: Query  # the query's projected gradient (`query.grad: (d,)`) and token ids
    k: int
    ordering: str = "most_influential"
    lam: float = 1.0
    seed: int = 0
    solver: str = "paper"
    pool_size: int | None = None  # as the request gave it; None: the deployment's default
    default_pool_size: int = 100
    preset: str = DEFAULT_PRESET  # search effort on an approximate index ("exact": scan every row)
    candidates: Callable[[], tuple[np.ndarray, np.ndarray]] = field(default=lambda: _no_candidates())
    """The top-`m` rows under `ordering` (retrieved and, if asked, re-ranked exactly) and their
    influence, best first; computed once per context."""
    find_row: Callable[[], int | None] = field(default=lambda: None)
    """The query's row among the training examples, None when it is not one."""
    shared: dict[str, Any] = field(default_factory=dict)
    """Per-index state a strategy keeps between queries (reconstruct's centred Gram)."""
    scratch: dict[Any, Any] = field(default_factory=dict)
    """Per-query state a strategy keeps between selections for the same query (compare's several
    ks: reconstruct's screening factorisation of one pool); it goes when the request ends."""

    @property
    def m(self) -> int:
        """The candidate pool size: as requested, else the deployment's default."""
        return self.pool_size or self.default_pool_size

    def influence(self, rows: np.ndarray) -> np.ndarray:
        """The estimator's exact influence of `rows` on the query, float64."""
        return np.asarray(self.estimator.influence(self.store, self.query, rows), dtype=np.float64)

    def proposal(self, strategy: str, rows: np.ndarray) -> Proposal:
        """`rows` as `strategy`'s proposal, with their exact influence."""
        return Proposal(strategy, rows, self.influence(rows))


def _no_candidates() -> tuple[np.ndarray, np.ndarray]:
    raise InvalidInputError("this selection has no candidate pool")


class Strategy(Protocol):
    """A named way of choosing k training examples for one query.

    `propose` returns one or more selections (the first is the strategy's own best guess);
    the explainer scores them in the request's score space and serves the best. `compared`:
    scored by default by `Explainer.compare` and the evaluation grid (strategies that work for
    any query and are a single method). `uses_influence`: it selects from the estimator's
    candidate pool (`SelectionContext.candidates`), so the estimator and ordering matter.
    """

    @property
    def name(self) -> str: ...

    @property
    def label(self) -> str: ...  # for people (the web page)

    @property
    def summary(self) -> str: ...  # one sentence: what it picks

    @property
    def compared(self) -> bool: ...

    @property
    def uses_influence(self) -> bool: ...

    def propose(self, ctx: SelectionContext) -> list[Proposal]: ...

    def work(self, m: int, k: int, solver: str) -> float: ...  # estimated seconds over m candidates (exemplar.cost)

    @property
    def scored_per_k(self) -> int: ...  # rows its proposals put through full-space scoring, per k (exemplar.cost)


RANKING_S = 1e-6
"""Seconds per candidate of a ranking (top-k, random, self)."""


def ranking_work(m: int, k: int, solver: str) -> float:
    """Estimated seconds of a ranking over m candidates (`Strategy.work`)."""
    return RANKING_S * m


@dataclass(frozen=True)
class FromPool:
    """A strategy that picks from the estimator's candidate pool: `pick(ctx, influence, rows)`
    (the pool's influence and rows, best first) returns positions in the pool, in selection order."""

    name: str
    label: str
    summary: str
    pick: Callable[[SelectionContext, np.ndarray, np.ndarray], np.ndarray]
    compared: bool = True
    uses_influence: bool = True
    cost: Callable[[int, int, str], float] = ranking_work  # `work`
    scored_per_k: int = 1

    def work(self, m: int, k: int, solver: str) -> float:
        return self.cost(m, k, solver)

    def propose(self, ctx: SelectionContext) -> list[Proposal]:
        rows, influence = ctx.candidates()
        picked = self.pick(ctx, influence, rows)
        return [Proposal(self.name, rows[picked], influence[picked])]


@dataclass(frozen=True)
class Direct:
    """A strategy that picks rows of the store without a candidate pool: `pick(ctx)` returns them,
    in selection order; their influence comes from the request's estimator."""

    name: str
    label: str
    summary: str
    pick: Callable[[SelectionContext], np.ndarray]
    compared: bool = True
    uses_influence: bool = False
    scored_per_k: int = 1

    def work(self, m: int, k: int, solver: str) -> float:
        return ranking_work(m, k, solver)

    def propose(self, ctx: SelectionContext) -> list[Proposal]:
        return [ctx.proposal(self.name, self.pick(ctx))]


# ---------------------------------------------------------------- input checks of the pure functions


def int_at_least(value: int, minimum: int, kind: str, below: str) -> int:
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


def positive_int(value: int, name: str) -> int:
    """``value`` as a Python int >= 1."""
    return int_at_least(value, 1, f"{name} must be an integer >= 1", f"{name} must be >= 1")


def influence_vector(influence: np.ndarray) -> npt.NDArray[np.float64]:
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


def grads_matrix(grads: np.ndarray, n: int) -> np.ndarray:
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


def checked_pool_grads(g: np.ndarray, pool: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
    """The pool's rows of ``g`` as float64; only they must be finite."""
    out = g[pool].astype(np.float64)  # (m, d)
    if not np.all(np.isfinite(out)):
        raise InvalidInputError("grads contains NaN or infinite values in the candidate pool")
    return out
