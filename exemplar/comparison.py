"""`compare`: several selections for one query, featurised once and scored from shared Grams."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Protocol

from exemplar.options import ExplainConfig, ExplainOptions, compare_points
from exemplar.relevance import Relevance
from exemplar.results import ComparePoint, Comparison
from exemplar.store import GradientStore
from exemplar.strategies import Proposal
from exemplar.tasks import Example


class Selector(Protocol):
    """What `compare` uses of an `exemplar.explain.Explainer` (named here, so the two modules do not
    import each other); a query's state is the explainer's `QueryState`."""

    config: ExplainConfig
    store: GradientStore

    def resolve(self, options: ExplainOptions) -> ExplainOptions: ...
    def check_options(self, options: ExplainOptions) -> None: ...
    def prepare(self, query: Example, *, keep_factors: bool = False) -> Any: ...
    def proposals(self, state: Any, options: ExplainOptions) -> list[Proposal]: ...
    def score_proposals(
        self, state: Any, proposals: Sequence[Proposal], options: ExplainOptions
    ) -> tuple[list[Relevance], list[Relevance]]: ...
    def pick(
        self,
        options: ExplainOptions,
        proposals: Sequence[Proposal],
        scores: Sequence[Relevance],
        projected: Sequence[Relevance],
    ) -> Any: ...


def compare(
    explainer: Selector,
    query: Example,
    options: ExplainOptions | None = None,
    *,
    strategies: Sequence[str] | None = None,
    ks: Sequence[int] | None = None,
) -> Comparison:
    """Score several selections for one query, featurised ONCE.

    `by_strategy`: each of `strategies` (default `exemplar.strategies.COMPARED` plus
    `options.strategy`) at `options.k`; `by_k`: `options.strategy` at each of `ks` (default
    `exemplar.options.COMPARE_KS` up to `max_k` and the index size, plus `options.k`), ascending
    (`exemplar.options.compare_points`). Every combination is checked before the model runs, so
    bad options cost nothing. In the full space every selection is scored from shared Grams
    (`Explainer.full_scores`).
    """
    options = explainer.resolve(options or ExplainOptions())
    names, sizes, points = compare_points(options, strategies, ks, max_k=explainer.config.max_k, n=explainer.store.n)
    for name in names:
        explainer.check_options(replace(options, strategy=name))
    for k in sizes:
        explainer.check_options(replace(options, k=k))
    t0 = time.perf_counter()
    state = explainer.prepare(query, keep_factors=options.score_space == "full")
    t1 = time.perf_counter()
    asked = {p: replace(options, strategy=p[0], k=p[1]) for p in points}
    proposed = {p: explainer.proposals(state, asked[p]) for p in points}
    flat = [prop for p in points for prop in proposed[p]]
    scores, projected = explainer.score_proposals(state, flat, options)
    scored: dict[tuple[str, int], ComparePoint] = {}
    start = 0
    for p in points:
        n = len(proposed[p])
        best = explainer.pick(asked[p], proposed[p], scores[start : start + n], projected[start : start + n])
        start += n
        scored[p] = ComparePoint(
            p[0],
            p[1],
            float(best.relevance.db),
            float(best.relevance.ratio),
            len(best.proposal.rows),
            best.reason,
            float(best.projected.db),
        )
    by_strategy = [scored[name, options.k] for name in names]
    by_k = [scored[options.strategy, k] for k in sizes]
    t2 = time.perf_counter()
    timings = {"gradient": (t1 - t0) * 1e3, "selection_and_score": (t2 - t1) * 1e3, "total": (t2 - t0) * 1e3}
    return Comparison(state.prediction, options, by_strategy, by_k, timings)
