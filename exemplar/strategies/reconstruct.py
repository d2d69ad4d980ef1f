"""``"reconstruct"`` (ours, beyond the paper): the selection whose simplex mixture best rebuilds
the query's gradient, found on the score itself.

- ``ReconstructPool``: the candidates it searches (the rows nearest the query gradient after
  centring, the most aligned ones, and the support of the best simplex mixture of the whole
  store or of a wider candidate set), with the store's centred Gram kept between queries.
- ``reconstruct_selections``: greedy forward selection that maximises the selection relevance
  score itself, and a start from the pool's best simplex mixture, each refined by swaps
  (screened many at a time by ``exemplar.strategies.reduced.ReducedScorer``).
- ``Reconstruct``: the strategy: the ends of that search over the served pool, best in the
  projection first (the explainer picks among them in the request's score space).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from exemplar.errors import InvalidInputError
from exemplar.relevance import SOLVERS, selection_relevance
from exemplar.search import scan_inner_products
from exemplar.simplex import exact_simplex_weights, simplex_weights_gram
from exemplar.store import GradientStore
from exemplar.strategies.base import TIE_RTOL, Proposal, SelectionContext, int_at_least, positive_int
from exemplar.strategies.reduced import ReducedScorer
from exemplar.threads import checkpoint

RECONSTRUCT_POOL_PER_K = 4
"""Without an explicit pool_size, `reconstruct` takes at least 4k nearest and 4k aligned candidates
(``ReconstructPool.candidates``; a pool of 100 nearest alone left too few good swaps at k = 25)."""
RECONSTRUCT_MIXTURE_ROWS = 2048
"""Up to this many rows, `reconstruct`'s pool also gets the support of the best mixture of the WHOLE
store (one QP per query on a Gram matrix cached per index, at most 32 MiB); larger stores fit over the
nearest, the most aligned and the most anti-aligned candidates instead (``ReconstructPool.candidates``)."""
RECONSTRUCT_MIXTURE_SOLVES = 1500
"""Face solves allowed to that QP's active-set method (the chat and tweets demos need at most 500 and
980); past it the iterate's support is used as it is, which bounds the cost on unusual stores."""
GRAM_CHUNK_COLUMNS = 1024
"""Coordinates per chunk when the whole store's Gram matrix is accumulated (bounds the float64 copy)."""

RECONSTRUCT_SCREEN_RTOL = 1e-6
"""``reconstruct`` re-scores with ``selection_relevance`` every candidate whose screened
ratio is this close (relatively) to the best screened ratio, and lets those scores decide;
the screening agrees with ``selection_relevance`` to rounding (1e-9 or closer in the tests,
~1e-7 at worst on selections holding near-duplicates 1e-8 apart)."""

RECONSTRUCT_SWAP_SWEEPS = 2
"""Default number of local-search sweeps ``reconstruct`` runs after its greedy selection."""

RECONSTRUCT_SWAP_RTOL = 1e-9
"""A swap must raise the ratio by more than this (relatively): rounding never swaps."""


class ReconstructPool:
    """The candidates `reconstruct` searches for one store; the store's centred Gram is built once."""

    def __init__(self, store: GradientStore) -> None:
        self.store = store
        self._centred_gram: np.ndarray | None = None

    def candidates(
        self, grad: np.ndarray, nearest: int, aligned: int, *, mixture: bool = False, preset: str = "exact"
    ) -> np.ndarray:
        """`reconstruct`'s pool: the `nearest` rows nearest the query gradient after centring and
        the `aligned` rows most aligned with it (largest cosine); sorted row ids.

        With k = 1 the score is `Var(g) / Var(g - a)`, and `d * Var(g - a)` is the squared
        distance between the centred vectors: `||a||^2 - d mean(a)^2 - 2 <a, g - mean(g)> + const`,
        where `<a, g - mean(g)> = <a, g> - d mean(a) mean(g)`. Aligned rows of any norm can be
        shrunk towards the query by the simplex weights (mixed with small rows).

        With `mixture`, the pool also gets every row with a positive weight in the exact
        simplex fit of the centred query gradient by the centred rows (the mixture behind the
        any-selection ceiling): over the whole store up to `RECONSTRUCT_MIXTURE_ROWS` rows,
        else over the nearest, the most aligned and the `aligned` most anti-aligned rows.
        Such mixtures lean on rows that are neither near nor aligned (anti-aligned ones
        cancel what the aligned ones overshoot), and at k = 25 the nearest and aligned pool
        alone missed them.

        Where these rows are looked for: with `preset` "exact", a store without a directions
        index, or one of at most `RECONSTRUCT_MIXTURE_ROWS` rows, one scan of every row
        (`scan_inner_products`). Otherwise the directions index (`search_directions`,
        `preset`'s effort) proposes the `nearest + aligned` rows nearest `g` by cosine after
        centring (`nearest + 2 aligned`, and as many nearest `-g`, with `mixture`); the same
        choice is made exactly
        among them: nothing reads every row, and the work per query no longer grows with the
        store. (Nearest after centring means a large centred cosine at a fitting norm, and the
        cosine barely moves when the small row means are removed.)
        """
        g = np.asarray(grad, dtype=np.float64)
        if preset != "exact" and self.store.directions_indexed and self.store.n > RECONSTRUCT_MIXTURE_ROWS:
            queries = np.stack([g, -g]) if mixture else g[None, :]  # -g: the anti-aligned rows of the mixture
            wanted = nearest + aligned + (aligned if mixture else 0)
            found = self.store.search_directions(queries.astype(np.float32), wanted, preset)
            return self.choose_among(g, found, nearest, aligned, mixture=mixture)
        found = np.arange(self.store.n, dtype=np.int64)
        dots = scan_inner_products(self.store.vectors, g).astype(np.float64)  # (n,) <a, g>
        means = np.asarray(self.store.row_means, dtype=np.float64)  # (n,)
        return self._choose(g, found, dots, means, nearest, aligned, mixture=mixture, whole_store=True)

    def choose_among(
        self, grad: np.ndarray, found: np.ndarray, nearest: int, aligned: int, *, mixture: bool = False
    ) -> np.ndarray:
        """`candidates`' choice made among the rows `found` (sorted row ids) only, from their stored vectors."""
        g = np.asarray(grad, dtype=np.float64)
        block = self.store.vectors_at(found).astype(np.float64)  # (c, d)
        dots, means = block @ g, block.mean(axis=1)  # (c,) <a, g>, (c,) mean(a)
        return self._choose(g, found, dots, means, nearest, aligned, mixture=mixture, whole_store=False)

    def _choose(
        self,
        g: npt.NDArray[np.float64],
        found: np.ndarray,
        dots: np.ndarray,
        means: np.ndarray,
        nearest: int,
        aligned: int,
        *,
        mixture: bool,
        whole_store: bool,
    ) -> np.ndarray:
        """The nearest, the most aligned and (with `mixture`) the mixture's rows among `found`, given
        their `dots` `<a, g>` and `means` `mean(a)`; `whole_store`: `found` is every row, so small
        stores fit the mixture on the cached whole-store Gram."""
        d = g.shape[0]
        norms = np.asarray(self.store.norms[found], dtype=np.float64)
        centred_dots = dots - d * means * g.mean()  # <a - mean(a), g - mean(g)>
        dist2 = norms**2 - d * means**2 - 2.0 * centred_dots
        cos = dots / np.where(norms > 0, norms, 1.0)  # |g| is common to every row
        near = np.argsort(dist2, kind="stable")[:nearest]  # positions in `found`
        most_aligned = np.argsort(-cos, kind="stable")[:aligned]
        rows = found[np.union1d(near, most_aligned)]
        if not mixture or self.store.n < 2:
            return rows
        if whole_store and self.store.n <= RECONSTRUCT_MIXTURE_ROWS:
            fit, gram = np.arange(found.shape[0]), self.centred_gram()
        else:
            fit = np.union1d(np.union1d(near, most_aligned), np.argsort(cos, kind="stable")[:aligned])
            block = self.store.vectors_at(found[fit]).astype(np.float64)  # (f, d)
            block -= block.mean(axis=1, keepdims=True)
            gram = block @ block.T  # (f, f)
        weights = simplex_weights_gram(gram, centred_dots[fit], max_solves=RECONSTRUCT_MIXTURE_SOLVES)  # (f,)
        return np.union1d(rows, found[fit][weights > 0]).astype(np.int64)

    def pool(
        self,
        grad: np.ndarray,
        k: int,
        pool_size: int | None = None,
        default_pool_size: int = 100,
        preset: str = "exact",
    ) -> np.ndarray:
        """The pool `reconstruct` serves from: `candidates` with the mixture rows and `pool_size`
        (default max(`default_pool_size`, `RECONSTRUCT_POOL_PER_K` k)) of each kind."""
        m = pool_size or max(default_pool_size, RECONSTRUCT_POOL_PER_K * k)
        return self.candidates(grad, m, m, mixture=True, preset=preset)

    def centred_gram(self) -> np.ndarray:
        """``(n, n)`` float64 Gram matrix of the centred store rows, built on first use and kept."""
        if self._centred_gram is None:
            n, d = self.store.n, int(self.store.vectors.shape[1])
            gram, sums = np.zeros((n, n)), np.zeros(n)
            for start in range(0, d, GRAM_CHUNK_COLUMNS):
                block = np.asarray(self.store.vectors[:, start : start + GRAM_CHUNK_COLUMNS], dtype=np.float64)
                gram += block @ block.T
                sums += block.sum(axis=1)
            means = sums / d  # (n,)
            # <a - mean(a), b - mean(b)> = <a, b> - d mean(a) mean(b)
            self._centred_gram = gram - d * np.outer(means, means)
        return self._centred_gram


# ---------------------------------------------------------------- the search


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


def reconstruct(test_grad: np.ndarray, grads: np.ndarray, k: int, **options: Any) -> npt.NDArray[np.int64]:
    """The best of ``reconstruct_selections(test_grad, grads, k, **options)`` in these coordinates
    (its first); see there for the search and its options."""
    return reconstruct_selections(test_grad, grads, k, **options)[0]


def _digest(*arrays: npt.NDArray[np.float64]) -> bytes:
    """A digest of the arrays' shapes and exact values."""
    h = hashlib.blake2b(digest_size=16)
    for arr in arrays:
        h.update(repr(arr.shape).encode())
        h.update(np.ascontiguousarray(arr, dtype=np.float64).data)
    return h.digest()


def _memo(memo: dict[Any, Any] | None, key: Any, make: Callable[[], Any]) -> Any:
    """``make()``, kept in ``memo`` under ``key`` when a memo is given."""
    if memo is None:
        return make()
    if key not in memo:
        memo[key] = make()
    return memo[key]


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
    memo: dict[Any, Any] | None = None,
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
    coordinates (``ReducedScorer.extensions``: each candidate's weights from one bordered
    solve on the current selection's Gram matrix, certified or else computed alone); every
    candidate within ``RECONSTRUCT_SCREEN_RTOL`` of the best screened ratio is then
    re-scored with ``selection_relevance`` itself, which decides (a swap step whose best
    screened ratio is below the current one by more than that re-scores nothing). A test
    gradient with zero variance scores 0 with every selection: the pool order is returned.

    ``memo``: a dict the caller keeps for one query. The pool's screening factorisation and
    its whole-pool fit go in it, keyed by the exact values they come from (`_memo`), so calls
    at several ``k`` over one pool (``compare``) compute them once.
    """
    k = positive_int(k, "k")
    pool_size = positive_int(pool_size, "pool_size")
    swap_sweeps = int_at_least(swap_sweeps, 0, "swap_sweeps must be a non-negative integer", "swap_sweeps must be >= 0")
    beam_width = int_at_least(beam_width, 0, "beam_width must be a non-negative integer", "beam_width must be >= 0")
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
    pool_grads = a[pool]  # (m, d)
    digest = _digest(pool_grads, g)
    scorer = _memo(memo, ("screening", solver, digest), lambda: ReducedScorer(pool_grads, g, solver))

    def scored(subset: list[int]) -> float:
        """The ratio of ``subset`` (pool positions) by ``selection_relevance`` itself."""
        return selection_relevance(test_grad, grads_in[pool[subset]], solver=solver).ratio

    def best_of(subsets: list[list[int]], screened: npt.NDArray[np.float64]) -> tuple[int, float]:
        """Index into ``subsets`` (pool positions) of the best ratio (ties to the earliest), and that
        ratio, given their ``screened`` ratios: the near-best are re-scored and decide."""
        keep = np.flatnonzero(screened >= screened.max() * (1.0 - RECONSTRUCT_SCREEN_RTOL))
        scores = []
        for i in keep:
            checkpoint()  # an exact score can take a while: light requests go first
            scores.append(scored(subsets[i]))
        ratios = np.array(scores)
        best = int(np.argmax(ratios >= ratios.max() * (1.0 - TIE_RTOL)))
        return int(keep[best]), float(ratios[best])

    ends: list[tuple[list[int], float]] = []  # every start's selection before and after its swaps

    def improve(order: list[int]) -> tuple[list[int], float]:
        """Greedy additions from ``order`` until ``steps`` are selected, then up to ``swap_sweeps`` swap sweeps."""
        order = list(order)
        ratio = scored(order) if order else 0.0
        while len(order) < steps:
            checkpoint()  # long searches let light requests go first (exemplar.threads.Priority)
            open_idx = np.setdiff1d(np.arange(m), order)
            best, ratio = best_of([[*order, int(j)] for j in open_idx], scorer.extensions(order, open_idx))
            order.append(int(open_idx[best]))
        ends.append((list(order), ratio))
        chosen = np.zeros(m, dtype=bool)
        chosen[order] = True
        for _ in range(swap_sweeps):
            swapped = False
            for i in range(len(order)):
                checkpoint()
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
        weights = _memo(memo, ("pool fit", digest), lambda: exact_simplex_weights(g, pool_grads))  # (m,) best mixture
        support = np.flatnonzero(weights > 0)
        seeded, seeded_ratio = improve([int(j) for j in support[np.argsort(-weights[support], kind="stable")][:steps]])
        if seeded_ratio > ratio * (1.0 + RECONSTRUCT_SWAP_RTOL):
            order, ratio = seeded, seeded_ratio
    if beam_width > 0:
        beam: list[list[int]] = [[]]
        for _ in range(steps):
            made: dict[frozenset[int], tuple[list[int], float]] = {}  # distinct selections, in the order made
            for sel in beam:
                checkpoint()
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


def served_pool(shared: dict[str, Any], store: GradientStore) -> ReconstructPool:
    """The `ReconstructPool` kept in an explainer's per-index strategy state (`SelectionContext.shared`)."""
    pools: ReconstructPool = shared.setdefault("reconstruct", ReconstructPool(store))
    return pools


RECONSTRUCT_S = 4e-6
"""Estimated seconds per (candidate x k^2) of `reconstruct` with the paper's solver (`Reconstruct.work`;
13-23 s at m = 2,000, k = 50 and 1.6-1.8 s with the default pool at k = 50 on the tweets demo, 2 cores)."""

RECONSTRUCT_EXACT_S = 3.2e-6
"""Estimated seconds per (candidate x k^3) with the exact solver: 788 s at m = 2,000, k = 50 on the
tweets demo and 104 s at m = 300, k = 50 on tiny; smaller k often run far faster (7.7 s at k = 25)."""


class Reconstruct:
    name = "reconstruct"
    label = "reconstruct"
    summary = "Examples chosen to rebuild the query's gradient as well as possible (maximises the score)."
    compared = True
    uses_influence = False
    scored_per_k = 2  # the search's ends (up to 3 selections) share most rows

    def work(self, m: int, k: int, solver: str) -> float:
        """Estimated seconds over a pool of m (at least the 2 x `RECONSTRUCT_POOL_PER_K` x k it takes itself)."""
        m = max(m, 2 * RECONSTRUCT_POOL_PER_K * k)
        return RECONSTRUCT_EXACT_S * m * k**3 if solver == "exact" else RECONSTRUCT_S * m * k**2

    def propose(self, ctx: SelectionContext) -> list[Proposal]:
        pool = served_pool(ctx.shared, ctx.store).pool(
            ctx.query.grad, ctx.k, ctx.pool_size, ctx.default_pool_size, ctx.preset
        )
        found = reconstruct_selections(
            ctx.query.grad,
            ctx.store.vectors_at(pool),
            ctx.k,
            solver=ctx.solver,
            pool_size=pool.shape[0],
            memo=ctx.scratch.setdefault("reconstruct", {}),  # keyed inside by the exact values
        )
        return [ctx.proposal(self.name, pool[picked]) for picked in found]
