"""The Explainer: options checked -> query gradient -> candidates -> strategy -> simplex weights -> score.

Influence comes from a named estimator (`exemplar.estimators`, paper sign convention:
negative = helpful). Candidates are the top-`pool_size` training examples under an ordering
(most/least influential, most helpful/harmful): for linear estimators from one or two FAISS
inner-product searches (`q` for proponents, `-q` for opponents), otherwise (and for "least
influential", which an inner-product index cannot return) from a scan of the memory-mapped
vectors; they are re-scored exactly. The strategy (`exemplar.strategies`, by name) then proposes
selections through a `SelectionContext`, and the best is scored with the Selection Relevance Score.

Scores live in one of two spaces (`SCORE_SPACES`): "full" (the default) scores the
returned examples on their full gradients w.r.t. the tracked weights (`exemplar.fullspace`:
one batched forward/backward of the k examples and the query), the space the paper defines
the score in; "projected" scores the index's projected vectors (no model work, for bulk
evaluation). Retrieval and selection always run in the projection; `reconstruct` and `auto`
then choose among their final candidates by the score in the requested space, since a
selection tuned on a projection overfits it.

`Explainer.compare` featurises a query once and scores several selections of it (dB by
strategy at one k, dB by k for one strategy), for the web page's comparison chart.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from exemplar import comparison
from exemplar.cost import Cost, RowClock, estimate, model_units
from exemplar.errors import ExemplarError, IndexIncompatibleError, InvalidInputError
from exemplar.estimators import EstimatorSet, Query
from exemplar.fullspace import FullGram, KroneckerGram, LayerFactors
from exemplar.gradients import KroneckerFeaturizer, ProjectionConfig
from exemplar.index import build_featurizer, open_index
from exemplar.models import load_model
from exemplar.options import ExplainConfig, ExplainOptions
from exemplar.relevance import Relevance, selection_relevance
from exemplar.results import Comparison, Explanation, Selected
from exemplar.store import Checkpoint, GradientStore
from exemplar.strategies import Proposal, SelectionContext, order_by, retrieve, strategy
from exemplar.tasks import Example
from exemplar.threads import PRIORITY, FairLock, checkpoint, rows_per_hold

FULL_GROUP_ROWS = 64
"""Selections scored together in the full space (`compare`, `reconstruct`'s and `auto`'s candidates)
share one forward/backward per group of at most this many distinct rows (a single larger selection
is its own group); each selection's Gram multiplies only its own pairs."""


@dataclass
class QueryState:
    """A featurised query: its gradient, content tokens, prediction; `row` once it was found among the training examples."""

    example: Example
    grad: np.ndarray
    token_ids: list[int]
    prediction: dict[str, Any]
    row: int | None = None
    checkpoint_grads: list[np.ndarray] | None = None
    factors: LayerFactors | None = None  # kept for full-space scoring: the query's pass is not redone
    scratch: dict[Any, Any] = field(default_factory=dict)  # strategies' per-query state (SelectionContext)

    @property
    def query(self) -> Query:
        return Query(self.grad, self.token_ids, self.checkpoint_grads)


@dataclass(frozen=True)
class Scored:
    """The selection chosen for a request, scored in `space` (`relevance`) and in the projection."""

    proposal: Proposal
    relevance: Relevance
    projected: Relevance
    space: str
    reason: str | None = None


class Explainer:
    """Chains featuriser, store, estimator, selection and score for one served index.

    Model work is serialised by a lock: PyTorch autograd on one shared model is not safe
    under concurrent calls (see docs/architecture.md).
    """

    def __init__(
        self,
        store: GradientStore,
        featurizer: KroneckerFeaturizer,
        config: ExplainConfig | None = None,
        *,
        sharing: Explainer | None = None,
    ) -> None:
        self.store = store
        self.featurizer = featurizer
        self.config = config or ExplainConfig()
        self.estimators = EstimatorSet(store)
        self.strategy_state: dict[str, Any] = {}  # per-index state strategies keep (SelectionContext.shared)
        self._checkpoint_featurizers: list[KroneckerFeaturizer] | None = None
        self._model_lock: FairLock
        self.full: KroneckerGram
        self.rows = RowClock()  # seconds per training example through the model, for `cost`
        if sharing is not None and sharing.featurizer is featurizer:  # another version over the same model
            self._model_lock = sharing._model_lock  # one model, one lock, whichever version a request uses
            self.full, self.rows = sharing.full, sharing.rows
            if sharing.store.manifest.checkpoints == store.manifest.checkpoints:
                self._checkpoint_featurizers = sharing._checkpoint_featurizers
            return
        self._model_lock = FairLock()  # first come, first served: see exemplar.threads
        self.full = KroneckerGram(featurizer.model, featurizer.task, featurizer.layers, batches=featurizer.batches)

    @contextlib.contextmanager
    def hold_model(self) -> Iterator[None]:
        """Hold the model (and its tokenizer): first come, first served, after any light work when
        this is the API's heavy lane (`exemplar.threads.checkpoint`)."""
        checkpoint()
        with self._model_lock:
            yield

    @classmethod
    def from_index(
        cls,
        index_dir: str | Path,
        config: ExplainConfig | None = None,
        *,
        batch_size: int = 16,
        previous: Explainer | None = None,
        **model_at: Any,
    ) -> Explainer:
        """Open an index and the model it was built from (`model_at`: `open_index`'s model_dir, adapter_dir,
        device, dtype); refuse any mismatch. With `previous`
        (the explainer served until now), a version built from the same model and projection shares
        its model, featuriser and model lock (`exemplar.index.open_index`): a hot swap neither loads
        the model again nor leaves two copies alive."""
        reuse = (previous.store.manifest, previous.featurizer) if previous is not None else None
        store, featurizer = open_index(index_dir, batch_size=batch_size, reuse=reuse, **model_at)
        return cls(store, featurizer, config, sharing=previous)

    def prepare(self, query: Example, *, keep_factors: bool = False) -> QueryState:
        """Featurise the query (one forward/backward); `keep_factors` for full-space scoring."""
        return self.prepare_many([query], keep_factors=keep_factors)[0]

    def prepare_many(self, queries: Sequence[Example], *, keep_factors: bool = False) -> list[QueryState]:
        """Featurise several queries in shared batched forward/backward passes. With
        `config.truncate_queries` off, a query longer than the index's `max_length` tokens is
        refused (`InvalidInputError`) instead of being cut. With `keep_factors` each state keeps its
        layers' inputs and output gradients: scoring it in the full space does not run it again."""
        with self.hold_model():
            for query in queries:
                self._check_query(query)
            return self._featurize_checked(queries, keep_factors)

    def _featurize_checked(self, queries: Sequence[Example], keep_factors: bool = False) -> list[QueryState]:
        """`prepare_many` without the checks, for a caller that holds the model lock and checked them."""
        feats = self.featurizer.featurize(queries, keep_factors=keep_factors)
        token_ids = [self.featurizer.task.lexical_ids(q) for q in queries]
        states = []
        for i, query in enumerate(queries):
            prediction = dict(feats.predictions[i])
            prediction["loss"] = feats.losses[i]
            prediction["truncated"] = feats.truncated[i]
            factors = feats.factors[i] if feats.factors is not None else None
            states.append(QueryState(query, feats.vectors[i], token_ids[i], prediction, factors=factors))
        return states

    def check_query(self, query: Example, truncate: bool | None = None) -> None:
        """Raise `InvalidInputError` for a query that cannot be explained as given: an unknown
        label, or (unless `truncate`, default `config.truncate_queries`) more tokens than the
        index's max_length."""
        with self.hold_model():
            self._check_query(query, truncate)

    def _check_query(self, query: Example, truncate: bool | None = None) -> None:
        """`check_query` for a caller that holds the model lock (the tokenizer is not thread-safe)."""
        task = self.featurizer.task
        allowed = self.config.truncate_queries if truncate is None else truncate
        if task.encode(query).truncated and not allowed:
            raise InvalidInputError(
                f"the query is longer than this index's max_length of {task.max_length} tokens; shorten it"
            )

    def checkpoint_gradients(self, state: QueryState) -> list[np.ndarray]:
        """The query's gradient under each of the index's checkpoints (TracIn); models load on first use."""
        if state.checkpoint_grads is None:
            with self.hold_model():
                if self._checkpoint_featurizers is None:
                    self._checkpoint_featurizers = [self._load_checkpoint(c) for c in self.store.manifest.checkpoints]
                state.checkpoint_grads = [f.featurize([state.example]).vectors[0] for f in self._checkpoint_featurizers]
        return state.checkpoint_grads

    def _load_checkpoint(self, checkpoint: Checkpoint) -> KroneckerFeaturizer:
        m = self.store.manifest
        device = str(self.featurizer.device)
        loaded = load_model(checkpoint.model_dir, m.task, checkpoint.adapter_dir, dtype=m.model_dtype, device=device)
        if loaded.checksum != checkpoint.model_checksum:
            raise IndexIncompatibleError(
                f"checkpoint {checkpoint.model_dir} changed since the index was built; rebuild it"
            )
        config = ProjectionConfig(params=m.params, proj_dim=m.proj_dim, seed=m.seed)
        return build_featurizer(loaded, config, m.max_length, batch_size=self.featurizer.batch_size)

    def rerank(self, state: QueryState, rows: np.ndarray, ordering: str) -> tuple[np.ndarray, np.ndarray]:
        """`rows` re-ordered under `ordering` by their exact full-space Grad-Dot influence
        `-<g_z, g'>` (one forward/backward of the rows, `KroneckerGram.cross`), and that influence.

        The projection decides which examples retrieval finds: on tweets, exactly re-ranking
        the projected top 100 recovered the true top 10 for every query (docs/search.md)."""
        stored = self.store.examples_at(np.asarray(rows).tolist())
        training = [e.to_example() for e in stored]
        parts = []
        step = rows_per_hold(self.featurizer.batch_size)  # the model is shared: short holds
        for start in range(0, len(training), step):
            with self.hold_model():
                t0 = time.perf_counter()
                parts.append(-self.full.cross(self._query_factors(state), training[start : start + step])[0])
                self._observe_rows(len(parts[-1]), time.perf_counter() - t0)
        influence = np.concatenate(parts) if parts else np.zeros(0)  # (m,)
        order = order_by(influence, ordering)
        return np.asarray(rows)[order], np.asarray(influence[order], dtype=np.float64)

    def resolve(self, options: ExplainOptions) -> ExplainOptions:
        """`options` with the deployment's defaults filled in (the score space)."""
        if options.score_space is None:
            return replace(options, score_space=self.config.score_space)
        return options

    def proposals(self, state: QueryState, options: ExplainOptions) -> list[Proposal]:
        """What `options.strategy` proposes, selected in the projection (`exemplar.strategies`):
        one selection, or several for the explainer to score (`reconstruct`'s search ends, best in
        the projection first; `auto`'s candidates)."""
        self.check_options(options)
        if options.estimator == "tracin":
            self.checkpoint_gradients(state)
        return strategy(options.strategy).propose(self.context(state, options))

    def context(self, state: QueryState, options: ExplainOptions) -> SelectionContext:
        """What a strategy sees of `state` under `options`; the candidate pool is retrieved once, on first use."""
        estimator = self.estimators.get(options.estimator)
        m = options.pool_size or self.config.pool_size
        pool: list[tuple[np.ndarray, np.ndarray]] = []

        def candidates() -> tuple[np.ndarray, np.ndarray]:
            if not pool:
                rows, influence = retrieve(self.store, estimator, state.query, options.ordering, m, options.preset)
                if options.rerank == "full":
                    rows, influence = self.rerank(state, rows, options.ordering)
                pool.append((rows, influence))
            return pool[0]

        def find_row() -> int | None:
            if state.row is None:
                state.row = self.store.find_row(state.example)
            return state.row

        return SelectionContext(
            self.store,
            estimator,
            state.query,
            options.k,
            ordering=options.ordering,
            lam=options.lam,
            seed=options.seed,
            solver=options.solver,
            pool_size=options.pool_size,
            default_pool_size=self.config.pool_size,
            preset=options.preset,
            candidates=candidates,
            find_row=find_row,
            shared=self.strategy_state,
            scratch=state.scratch,
        )

    def choose(self, state: QueryState, options: ExplainOptions) -> Scored:
        """The selection `options` asks for, scored in its score space (and in the projection)."""
        options = self.resolve(options)
        proposals = self.proposals(state, options)
        return self.pick(options, proposals, *self.score_proposals(state, proposals, options))

    def score_proposals(
        self, state: QueryState, proposals: Sequence[Proposal], options: ExplainOptions
    ) -> tuple[list[Relevance], list[Relevance]]:
        """Each proposal's score in `options.score_space`, and in the projection."""
        projected = [self.score(state, p.rows, options.solver) for p in proposals]
        if options.score_space != "full":
            return projected, projected
        return self.full_scores(state, [p.rows for p in proposals], options.solver), projected

    @staticmethod
    def pick(
        options: ExplainOptions,
        proposals: Sequence[Proposal],
        scores: Sequence[Relevance],
        projected: Sequence[Relevance],
    ) -> Scored:
        """The best-scoring proposal (the first of equals); for `auto` the reason, by strategy."""
        best = max(range(len(proposals)), key=lambda i: scores[i].db)
        space = str(options.score_space)
        reason = None
        if options.strategy == "auto":
            by_strategy: dict[str, float] = {}
            for p, r in zip(proposals, scores, strict=True):
                by_strategy[p.strategy] = max(by_strategy.get(p.strategy, -np.inf), r.db)
            reason = f"{proposals[best].strategy} scored highest ({space} space): " + ", ".join(
                f"{name} {db:.2f} dB" for name, db in by_strategy.items()
            )
        return Scored(proposals[best], scores[best], projected[best], space, reason)

    def select(self, state: QueryState, options: ExplainOptions) -> tuple[np.ndarray, np.ndarray, str | None]:
        """Rows chosen by `options.strategy` in the projection alone (in selection order), their
        influence, and a reason (auto only): no model work, for bulk evaluation."""
        scored = self.choose(state, replace(options, score_space="projected"))
        return scored.proposal.rows, scored.proposal.influence, scored.reason

    def score(self, state: QueryState, rows: np.ndarray, solver: str = "paper") -> Relevance:
        """The score of `rows` on the index's projected vectors."""
        return selection_relevance(state.grad, self.store.vectors_at(rows), solver=solver)

    def full_gram(self, state: QueryState, rows: np.ndarray) -> FullGram:
        """Full-space Gram of the query (position 0) and the training examples `rows` (positions 1..);
        the query's own pass is reused when its state kept its factors."""
        training = [e.to_example() for e in self.store.examples_at(np.asarray(rows).tolist())]
        with self.hold_model():
            return self.full.gram(training, prefix=self._query_factors(state))

    def _query_factors(self, state: QueryState) -> LayerFactors:
        """The query's layer factors: those its featurisation kept, else one pass now, kept in `state`.
        The caller holds the model lock."""
        if state.factors is None:
            state.factors = self.full.factors([state.example])
        return state.factors

    def full_scores(
        self, state: QueryState, selections: Sequence[np.ndarray], solver: str = "paper"
    ) -> list[Relevance]:
        """The score of each selection (rows) on the full gradients (`full_grams`)."""
        return [gram.relevance(solver) for gram in self.full_grams(state, selections)]

    def full_grams(
        self,
        state: QueryState,
        selections: Sequence[np.ndarray],
        *,
        computer: KroneckerGram | None = None,
        group_rows: int = FULL_GROUP_ROWS,
    ) -> list[FullGram]:
        """The full-space Gram of the query (position 0) and each selection's rows (positions 1..,
        in the selection's order). Selections are packed into groups, largest first, whose distinct
        rows are at most `group_rows` and fit the computer's `max_chunk_tokens`: one forward/backward
        per group, and each selection's Gram multiplies only its own pairs
        (`KroneckerGram.subset_grams`); a repeated selection is computed once."""
        computer = computer or self.full
        keys = [tuple(int(r) for r in rows) for rows in selections]
        distinct = list(dict.fromkeys(keys))
        union = sorted({r for key in distinct for r in key})
        examples = dict(zip(union, (e.to_example() for e in self.store.examples_at(union)), strict=True))
        with self.hold_model():  # the tokenizer is not thread-safe either
            tokens = {r: len(self.featurizer.task.encode(e).input_ids) for r, e in examples.items()}
        groups: list[tuple[list[tuple[int, ...]], set[int]]] = []
        for key in sorted(distinct, key=len, reverse=True):
            members = set(key)
            for group, rows in groups:
                merged = rows | members
                if len(merged) <= group_rows and sum(tokens[r] for r in merged) <= computer.max_chunk_tokens:
                    group.append(key)
                    rows |= members
                    break
            else:
                groups.append(([key], members))
        grams: dict[tuple[int, ...], FullGram] = {}
        for group, rows in groups:
            ordered = sorted(rows)
            position = {r: j for j, r in enumerate(ordered)}
            subsets = [[position[r] for r in key] for key in group]
            with self.hold_model():
                query = self._query_factors(state)
            t0 = time.perf_counter()
            done = computer.subset_grams([examples[r] for r in ordered], subsets, prefix=query, model=self.hold_model)
            self._observe_rows(model_units(len(ordered), [len(key) for key in group]), time.perf_counter() - t0)
            grams.update(zip(group, done, strict=True))
        return [grams[key] for key in keys]

    def explain(self, query: Example, options: ExplainOptions | None = None, **kwargs: Any) -> Explanation:
        """Explain one output: options as an `ExplainOptions` or as keyword arguments."""
        options = self.resolve(options or ExplainOptions(**kwargs))
        self.check_options(options)  # before any model work: a bad option costs no forward/backward
        t0 = time.perf_counter()
        state = self.prepare(query, keep_factors=options.score_space == "full")
        return self._finish(state, options, (time.perf_counter() - t0) * 1e3)

    def cost(self, options: ExplainOptions, points: Sequence[tuple[str, int]] | None = None) -> Cost:
        """Estimated cost of `options` (or of each (strategy, k) of `points`) here (`exemplar.cost`)."""
        options = self.resolve(options)
        return estimate(
            points or [(options.strategy, options.k)],
            pool=options.pool_size or self.config.pool_size,
            n=self.store.n,
            solver=options.solver,
            full_space=options.score_space == "full",
            rerank=options.rerank == "full",
            row_s=self.rows.seconds,
        )

    def _observe_rows(self, units: float, seconds: float) -> None:
        """Feed the row clock (`model_units`), except from the heavy lane (its timings include waits)."""
        if not PRIORITY.is_heavy():
            self.rows.observe(units, seconds)

    def check_options(self, options: ExplainOptions) -> None:
        """Raise `InvalidInputError` unless `options` are valid for this index and configuration
        (k up to `ExplainConfig.max_k`, the estimator's orderings, ...); no model work."""
        self.estimators.get(options.estimator)  # unknown, or not in this index
        options.check(self.config)

    def compare(
        self,
        query: Example,
        options: ExplainOptions | None = None,
        *,
        strategies: Sequence[str] | None = None,
        ks: Sequence[int] | None = None,
    ) -> Comparison:
        """Score several selections for one query, featurised ONCE (`exemplar.comparison.compare`)."""
        return comparison.compare(self, query, options, strategies=strategies, ks=ks)

    def explain_many(self, requests: Sequence[tuple[Example, ExplainOptions]]) -> list[Explanation | ExemplarError]:
        """Explain several outputs with ONE batched featurisation (micro-batching); per-request results.

        A request that fails (bad label, unknown option, ...) gets its `ExemplarError` in its
        place and does not fail the others: if the batched featurisation fails, each query is
        featurised on its own to find the culprit. Every explanation reports the batch's
        gradient time.
        """
        t0 = time.perf_counter()
        keep = any(self.resolve(options).score_space == "full" for _, options in requests)
        states: list[QueryState | ExemplarError | None] = []
        try:
            with self.hold_model():  # cheap per-query checks first, so one bad query does not split the batch
                for query, options in requests:
                    try:
                        self.check_options(self.resolve(options))
                        self._check_query(query)
                        states.append(None)
                    except ExemplarError as exc:
                        states.append(exc)
                valid = [i for i, st in enumerate(states) if st is None]
                prepared_states = self._featurize_checked([requests[i][0] for i in valid], keep) if valid else []
            for i, prepared in zip(valid, prepared_states, strict=True):
                states[i] = prepared
        except ExemplarError:  # not caught by the checks: find the culprit one by one
            for i in valid:
                try:
                    states[i] = self.prepare(requests[i][0], keep_factors=keep)
                except ExemplarError as exc:
                    states[i] = exc
        gradient_ms = (time.perf_counter() - t0) * 1e3
        out: list[Explanation | ExemplarError] = []
        for state, (_, options) in zip(states, requests, strict=True):
            if state is None or isinstance(state, ExemplarError):
                out.append(state or InvalidInputError("the query could not be featurised"))
                continue
            try:
                out.append(self._finish(state, options, gradient_ms))
            except ExemplarError as exc:
                out.append(exc)
        return out

    def _finish(self, state: QueryState, options: ExplainOptions, gradient_ms: float) -> Explanation:
        """Selection, weights and score for a featurised query."""
        options = self.resolve(options)
        t1 = time.perf_counter()
        proposals = self.proposals(state, options)
        t2 = time.perf_counter()
        scored = self.pick(options, proposals, *self.score_proposals(state, proposals, options))
        t3 = time.perf_counter()
        rows, relevance = scored.proposal.rows, scored.relevance
        examples = self.store.examples_at(rows.tolist())
        timings = {"gradient": gradient_ms, "selection": (t2 - t1) * 1e3, "score": (t3 - t2) * 1e3}
        timings["total"] = gradient_ms + (time.perf_counter() - t1) * 1e3
        selected = [
            Selected(ex, float(w), float(i))
            for ex, w, i in zip(examples, relevance.weights, scored.proposal.influence, strict=True)
        ]
        return Explanation(
            state.prediction,
            selected,
            float(relevance.db),
            float(relevance.ratio),
            scored.proposal.strategy,
            options,
            scored.reason,
            timings,
            score_space=scored.space,
            projected_score_db=float(scored.projected.db),
        )
