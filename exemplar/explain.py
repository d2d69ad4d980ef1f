"""The Explainer: query gradient -> candidates -> selection -> simplex weights -> score.

Influence comes from a named estimator (`exemplar.estimators`, paper sign convention:
negative = helpful). Candidates are the top-`pool_size` training examples under an
ordering (most/least influential, most helpful/harmful): for linear estimators from one or
two FAISS inner-product searches (proponents with `q`, opponents with `-q`), otherwise
(and always for "least influential", which an inner-product index cannot return) from a
vectorised scan over the memory-mapped vectors. Candidates are re-scored exactly before
selection. The selection is then scored with the Selection Relevance Score.

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

import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from exemplar import selection
from exemplar.errors import ExemplarError, IndexIncompatibleError, InvalidInputError
from exemplar.estimators import ESTIMATOR_NAMES, Estimator, Query
from exemplar.fullspace import FullGram, KroneckerGram, LayerFactors
from exemplar.gradients import KroneckerFeaturizer, ProjectionConfig
from exemplar.index import build_featurizer, open_index
from exemplar.models import load_model
from exemplar.relevance import SOLVERS, Relevance, selection_relevance, simplex_weights_gram
from exemplar.search import DEFAULT_PRESET, check_preset
from exemplar.store import Checkpoint, FaissGradientStore, StoredExample
from exemplar.tasks import Example

STRATEGIES = ("balanced", "topk", "random", "divine", "aide", "self", "reconstruct", "auto")
AUTO_CANDIDATES = ("topk", "balanced", "reconstruct")
RECONSTRUCT_POOL_PER_K = 4
"""Without an explicit pool_size, `reconstruct` takes at least 4k nearest and 4k aligned candidates
(``Explainer.reconstruct_candidates``; a pool of 100 nearest alone left too few good swaps at k = 25)."""
RECONSTRUCT_MIXTURE_ROWS = 2048
"""Up to this many rows, `reconstruct`'s pool also gets the support of the best mixture of the WHOLE
store (one QP per query on a Gram matrix cached per index, at most 32 MiB); larger stores fit over the
nearest, the most aligned and the most anti-aligned candidates instead (``Explainer.reconstruct_candidates``)."""
RECONSTRUCT_MIXTURE_SOLVES = 1500
"""Face solves allowed to that QP's active-set method (the chat and tweets demos need at most 500 and
980); past it the iterate's support is used as it is, which bounds the cost on unusual stores."""
GRAM_CHUNK_COLUMNS = 1024
"""Coordinates per chunk when the whole store's Gram matrix is accumulated (bounds the float64 copy)."""
COMPARE_STRATEGIES = ("topk", "balanced", "divine", "aide", "reconstruct", "random")
"""Strategies `compare` scores by default ("self" only works for training examples; "auto" is the best of three)."""
COMPARE_KS = (1, 5, 10, 25)
"""The k `compare` scores by default, capped by `max_k` and the index size."""
SCORE_SPACES = ("full", "projected")
"""Where a selection is scored: "full" = the model's own gradients of the tracked weights (exact, one
forward/backward of the selection); "projected" = the index's projected vectors (no model work)."""
FULL_GROUP_ROWS = 64
"""Selections scored together in the full space (`compare`, `reconstruct`'s and `auto`'s candidates)
share one forward/backward per group of at most this many distinct rows (a single larger selection
is its own group); each selection's Gram multiplies only its own pairs."""
MAX_POOL_SIZE = 10_000
"""The largest candidate pool a request may ask for (`ExplainOptions.pool_size`; the API schema reads it)."""
RERANKS = ("none", "full")
"""`rerank`: "full" re-orders the candidate pool by exact full-space Grad-Dot influence (`Explainer.rerank`)."""
RERANK_MAX_POOL = 1000
"""`rerank: "full"` runs a forward/backward of every candidate: larger pools are refused (about 13 ms
per candidate for MiniLM on 2 cores, so 1,000 already hold the model for over 10 s)."""
WEIGHT_ZERO = 1e-6
"""A simplex weight at or below this counts as zero: that example takes no part in the reconstruction."""


@dataclass(frozen=True)
class ExplainConfig:
    """Limits and defaults of explanation requests."""

    pool_size: int = 100
    max_k: int = 50
    truncate_queries: bool = True  # False: a query longer than the index's max_length is refused
    score_space: str = "full"  # the default of requests that do not say (SCORE_SPACES)


@dataclass(frozen=True)
class ExplainOptions:
    """What one explanation request asks for (validated by `check`)."""

    k: int = 5
    strategy: str = "reconstruct"  # the highest full-space score and weighted validation (docs/method.md)
    lam: float = 1.0
    seed: int = 0
    estimator: str = "grad_dot"
    ordering: str = "most_influential"
    pool_size: int | None = None
    solver: str = "paper"
    preset: str = DEFAULT_PRESET  # search effort of approximate indexes (exemplar.search.PRESETS)
    score_space: str | None = None  # SCORE_SPACES; None: the deployment's default (ExplainConfig)
    rerank: str = "none"  # RERANKS: "full" re-ranks the candidate pool by exact full-space influence

    def check(self, config: ExplainConfig, signed: bool) -> None:
        if not 1 <= self.k <= config.max_k:
            raise InvalidInputError(f"k must be between 1 and {config.max_k}; got {self.k}")
        if self.strategy not in STRATEGIES:
            raise InvalidInputError(f"unknown strategy {self.strategy!r}; choose one of: {', '.join(STRATEGIES)}")
        if self.estimator not in ESTIMATOR_NAMES:
            raise InvalidInputError(
                f"unknown estimator {self.estimator!r}; choose one of: {', '.join(ESTIMATOR_NAMES)}"
            )
        if self.ordering not in selection.ORDERINGS:
            raise InvalidInputError(
                f"unknown ordering {self.ordering!r}; choose one of: {', '.join(selection.ORDERINGS)}"
            )
        if not signed and self.ordering in ("most_helpful", "most_harmful"):
            raise InvalidInputError(
                f"estimator {self.estimator!r} is a similarity without sign: use ordering most_influential or least_influential"
            )
        if self.solver not in SOLVERS:
            raise InvalidInputError(f"unknown solver {self.solver!r}; choose one of: {', '.join(SOLVERS)}")
        if not 0.0 <= self.lam <= 1.0:
            raise InvalidInputError(f"lam must be in [0, 1]; got {self.lam}")
        if self.pool_size is not None and not 1 <= self.pool_size <= MAX_POOL_SIZE:
            raise InvalidInputError(f"pool_size must be between 1 and {MAX_POOL_SIZE}; got {self.pool_size}")
        check_preset(self.preset)
        if self.score_space is not None and self.score_space not in SCORE_SPACES:
            raise InvalidInputError(
                f"unknown score_space {self.score_space!r}; choose one of: {', '.join(SCORE_SPACES)}"
            )
        if self.rerank not in RERANKS:
            raise InvalidInputError(f"unknown rerank {self.rerank!r}; choose one of: {', '.join(RERANKS)}")
        if self.rerank == "full" and (self.pool_size or config.pool_size) > RERANK_MAX_POOL:
            raise InvalidInputError(
                f"rerank 'full' runs the model on every candidate: use a pool_size of at most {RERANK_MAX_POOL}"
            )
        if self.rerank == "full" and self.estimator != "grad_dot":
            raise InvalidInputError(
                f"rerank 'full' re-ranks by exact full-space Grad-Dot influence: use estimator grad_dot, not "
                f"{self.estimator!r}"
            )


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

    @property
    def query(self) -> Query:
        return Query(self.grad, self.token_ids, self.checkpoint_grads)


@dataclass(frozen=True)
class Proposal:
    """A selection one strategy proposes: `rows` in selection order and their influence."""

    strategy: str
    rows: np.ndarray
    influence: np.ndarray


@dataclass(frozen=True)
class Scored:
    """The selection chosen for a request, scored in `space` (`relevance`) and in the projection."""

    proposal: Proposal
    relevance: Relevance
    projected: Relevance
    space: str
    reason: str | None = None


@dataclass(frozen=True)
class Selected:
    """One selected training example with its simplex weight and influence."""

    example: StoredExample
    weight: float
    influence: float


@dataclass
class Explanation:
    """The answer to one query."""

    prediction: dict[str, Any]
    examples: list[Selected]
    score_db: float
    score_ratio: float
    strategy: str
    options: ExplainOptions = field(default_factory=ExplainOptions)
    reason: str | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    score_space: str = "projected"
    projected_score_db: float = float("nan")

    @property
    def n_weighted(self) -> int:
        """How many examples carry weight (> `WEIGHT_ZERO`): the ones that make up the reconstruction."""
        return sum(1 for s in self.examples if s.weight > WEIGHT_ZERO)

    def to_dict(self, index: dict[str, Any] | None = None) -> dict[str, Any]:
        """The JSON form every shell returns (`/v1/explain`, a job's results): a non-finite score
        becomes None; ``index`` is the served index's summary (`Manifest.summary`)."""
        return {
            "prediction": self.prediction,
            "examples": [
                {
                    **{k: v for k, v in asdict(s.example).items() if v is not None and k != "row"},
                    "weight": s.weight,
                    "influence": s.influence,
                }
                for s in self.examples
            ],
            "score_db": self.score_db if np.isfinite(self.score_db) else None,
            "score_ratio": self.score_ratio,
            "score_space": self.score_space,
            "solver": self.options.solver,
            "projected_score_db": self.projected_score_db if np.isfinite(self.projected_score_db) else None,
            "n_weighted": self.n_weighted,
            "strategy": self.strategy,
            "reason": self.reason,
            "preset": self.options.preset,
            "options": asdict(self.options),
            "k": self.options.k,
            "index": index or {},
            "timings_ms": {name: round(ms, 3) for name, ms in self.timings_ms.items()},
        }


@dataclass(frozen=True)
class ComparePoint:
    """One scored selection of a comparison: `strategy` at `k` (`n_examples` may be fewer than k)."""

    strategy: str
    k: int
    score_db: float
    score_ratio: float
    n_examples: int
    reason: str | None = None
    projected_score_db: float = float("nan")


@dataclass
class Comparison:
    """Scores of one query's selections: by strategy at `options.k`, and by k for `options.strategy`."""

    prediction: dict[str, Any]
    options: ExplainOptions
    by_strategy: list[ComparePoint]
    by_k: list[ComparePoint]
    timings_ms: dict[str, float] = field(default_factory=dict)


class Explainer:
    """Chains featuriser, store, estimator, selection and score for one served index.

    Model work is serialised by a lock: PyTorch autograd on one shared model is not safe
    under concurrent calls (see docs/architecture.md).
    """

    def __init__(
        self, store: FaissGradientStore, featurizer: KroneckerFeaturizer, config: ExplainConfig | None = None
    ) -> None:
        self.store = store
        self.featurizer = featurizer
        self.config = config or ExplainConfig()
        self._model_lock = threading.Lock()
        self._checkpoint_featurizers: list[KroneckerFeaturizer] | None = None
        self._centred_gram: np.ndarray | None = None
        self.full = KroneckerGram(featurizer.model, featurizer.task, featurizer.layers, batches=featurizer.batches)

    @classmethod
    def from_index(
        cls, index_dir: str | Path, config: ExplainConfig | None = None, *, batch_size: int = 16
    ) -> Explainer:
        """Open an index and the model it was built from; refuse any mismatch."""
        store, featurizer = open_index(index_dir, batch_size=batch_size)
        return cls(store, featurizer, config)

    def prepare(self, query: Example, *, keep_factors: bool = False) -> QueryState:
        """Featurise the query (one forward/backward); `keep_factors` for full-space scoring."""
        return self.prepare_many([query], keep_factors=keep_factors)[0]

    def prepare_many(self, queries: Sequence[Example], *, keep_factors: bool = False) -> list[QueryState]:
        """Featurise several queries in shared batched forward/backward passes.

        With `config.truncate_queries` off, a query longer than the index's `max_length`
        tokens is refused (`InvalidInputError`) instead of being cut. With `keep_factors`
        each state keeps its layers' inputs and output gradients, so scoring it in the full
        space does not run the query again.
        """
        with self._model_lock:
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
        with self._model_lock:
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
            with self._model_lock:
                if self._checkpoint_featurizers is None:
                    self._checkpoint_featurizers = [self._load_checkpoint(c) for c in self.store.manifest.checkpoints]
                state.checkpoint_grads = [f.featurize([state.example]).vectors[0] for f in self._checkpoint_featurizers]
        return state.checkpoint_grads

    def _load_checkpoint(self, checkpoint: Checkpoint) -> KroneckerFeaturizer:
        m = self.store.manifest
        loaded = load_model(checkpoint.model_dir, m.task, checkpoint.adapter_dir)
        if loaded.checksum != checkpoint.model_checksum:
            raise IndexIncompatibleError(
                f"checkpoint {checkpoint.model_dir} changed since the index was built; rebuild it"
            )
        config = ProjectionConfig(params=m.params, proj_dim=m.proj_dim, seed=m.seed)
        return build_featurizer(loaded, config, m.max_length, batch_size=self.featurizer.batch_size)

    def candidates(
        self, state: QueryState, estimator: Estimator, ordering: str, m: int, preset: str = DEFAULT_PRESET
    ) -> tuple[np.ndarray, np.ndarray]:
        """The top-`m` rows under `ordering` and their exact influence, in that order.

        Linear estimators search the index (`preset`: its effort, for approximate index
        types); whatever rows it finds are re-scored exactly here before they are ranked.
        """
        q = estimator.search_vector(state.query)
        if q is not None and ordering != "least_influential":
            parts = []
            if ordering in ("most_influential", "most_helpful"):  # largest <v, q>: most negative I
                parts.append(self.store.search(q, m, preset)[1])
            if ordering in ("most_influential", "most_harmful"):  # largest <v, -q>: most positive I
                parts.append(self.store.search(-q, m, preset)[1])
            rows = np.unique(np.concatenate(parts))
            influence = estimator.influence(self.store, state.query, rows)
        else:
            influence = estimator.scan(self.store, state.query)
            rows = np.arange(self.store.n, dtype=np.int64)
        order = selection.order_by(influence, ordering)[:m]
        return rows[order], np.asarray(influence[order], dtype=np.float64)

    def rerank(self, state: QueryState, rows: np.ndarray, ordering: str) -> tuple[np.ndarray, np.ndarray]:
        """`rows` re-ordered under `ordering` by their exact full-space Grad-Dot influence
        `-<g_z, g'>` (one forward/backward of the rows, `KroneckerGram.cross`), and that influence.

        The projection decides which examples retrieval finds: on tweets, exactly re-ranking
        the projected top 100 recovered the true top 10 for every query (docs/search.md)."""
        stored = self.store.examples_at(np.asarray(rows).tolist())
        training = [e.to_example() for e in stored]
        with self._model_lock:
            influence = -self.full.cross(self._query_factors(state), training)[0]  # (m,)
        order = selection.order_by(influence, ordering)
        return np.asarray(rows)[order], np.asarray(influence[order], dtype=np.float64)

    def reconstruct_candidates(
        self, state: QueryState, nearest: int, aligned: int, *, mixture: bool = False
    ) -> np.ndarray:
        """`reconstruct`'s pool: the `nearest` rows nearest the query gradient after centring and
        the `aligned` rows most aligned with it (largest cosine), from one scan; sorted row ids.

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
        """
        from exemplar.estimators import scan_inner_products

        d = state.grad.shape[0]
        g = np.asarray(state.grad, dtype=np.float64)
        norms = np.asarray(self.store.norms, dtype=np.float64)  # (n,)
        means = np.asarray(self.store.row_means, dtype=np.float64)  # (n,)
        dots = scan_inner_products(self.store.vectors, g).astype(np.float64)  # (n,) <a, g>
        centred_dots = dots - d * means * g.mean()  # (n,) <a - mean(a), g - mean(g)>
        dist2 = norms**2 - d * means**2 - 2.0 * centred_dots
        cos = dots / np.where(norms > 0, norms, 1.0)  # |g| is common to every row
        near_rows = np.argsort(dist2, kind="stable")[:nearest]
        aligned_rows = np.argsort(-cos, kind="stable")[:aligned]
        rows = np.union1d(near_rows, aligned_rows).astype(np.int64)
        if not mixture or self.store.n < 2:
            return rows
        if self.store.n <= RECONSTRUCT_MIXTURE_ROWS:
            fit_rows = np.arange(self.store.n, dtype=np.int64)
            gram = self.centred_gram()
        else:
            fit_rows = np.union1d(rows, np.argsort(cos, kind="stable")[:aligned]).astype(np.int64)
            block = self.store.vectors_at(fit_rows).astype(np.float64)  # (f, d)
            block -= block.mean(axis=1, keepdims=True)
            gram = block @ block.T  # (f, f)
        weights = simplex_weights_gram(gram, centred_dots[fit_rows], max_solves=RECONSTRUCT_MIXTURE_SOLVES)  # (f,)
        return np.union1d(rows, fit_rows[weights > 0]).astype(np.int64)

    def reconstruct_pool(self, state: QueryState, k: int, pool_size: int | None = None) -> np.ndarray:
        """The pool `reconstruct` serves from: `reconstruct_candidates` with the mixture rows and
        `pool_size` (default max(config pool size, `RECONSTRUCT_POOL_PER_K` k)) of each kind."""
        m = pool_size or max(self.config.pool_size, RECONSTRUCT_POOL_PER_K * k)
        return self.reconstruct_candidates(state, m, m, mixture=True)

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

    def resolve(self, options: ExplainOptions) -> ExplainOptions:
        """`options` with the deployment's defaults filled in (the score space)."""
        if options.score_space is None:
            return replace(options, score_space=self.config.score_space)
        return options

    def proposals(self, state: QueryState, options: ExplainOptions) -> list[Proposal]:
        """What `options.strategy` proposes, selected in the projection: one selection; for
        `reconstruct` the ends of its search (best in the projection first); for `auto` those of
        each of `AUTO_CANDIDATES`, in that order."""
        estimator = self.store.estimator(options.estimator)
        options.check(self.config, estimator.signed)
        if options.estimator == "tracin":
            self.checkpoint_gradients(state)
        m = options.pool_size or self.config.pool_size
        k, strategy = options.k, options.strategy
        if strategy == "auto":
            return [p for name in AUTO_CANDIDATES for p in self.proposals(state, replace(options, strategy=name))]
        if strategy in ("random", "self", "reconstruct"):
            if strategy == "random":
                picks = [selection.random_selection(self.store.n, k, options.seed)]
            elif strategy == "self":
                if state.row is None:
                    state.row = self.store.find_row(state.example)
                picks = [selection.self_selection(state.row, k)]
            else:
                pool = self.reconstruct_pool(state, k, options.pool_size)
                picks = [
                    pool[picked]
                    for picked in selection.reconstruct_selections(
                        state.grad, self.store.vectors_at(pool), k, solver=options.solver, pool_size=pool.shape[0]
                    )
                ]
            return [
                Proposal(
                    strategy, rows, np.asarray(estimator.influence(self.store, state.query, rows), dtype=np.float64)
                )
                for rows in picks
            ]
        pool, influence = self.candidates(state, estimator, options.ordering, m, options.preset)
        if options.rerank == "full":
            pool, influence = self.rerank(state, pool, options.ordering)
        if strategy == "topk":
            picked = selection.topk(influence, k, ordering=options.ordering)
        elif strategy == "balanced":
            grads = self.store.vectors_at(pool)
            picked = selection.facility_location(
                influence, grads, k, lam=options.lam, pool_size=m, ordering=options.ordering
            )
        elif strategy == "divine":
            picked = selection.divine(influence, self.store.vectors_at(pool), k, ordering=options.ordering, pool_size=m)
        else:  # aide
            picked = selection.aide(influence, self.store.vectors_at(pool), state.grad, k, pool_size=m)
        return [Proposal(strategy, pool[picked], influence[picked])]

    def choose(self, state: QueryState, options: ExplainOptions) -> Scored:
        """The selection `options` asks for, scored in its score space (and in the projection)."""
        options = self.resolve(options)
        proposals = self.proposals(state, options)
        return self._pick(options, proposals, *self._score_proposals(state, proposals, options))

    def _score_proposals(
        self, state: QueryState, proposals: Sequence[Proposal], options: ExplainOptions
    ) -> tuple[list[Relevance], list[Relevance]]:
        """Each proposal's score in `options.score_space`, and in the projection."""
        projected = [self.score(state, p.rows, options.solver) for p in proposals]
        if options.score_space != "full":
            return projected, projected
        return self.full_scores(state, [p.rows for p in proposals], options.solver), projected

    @staticmethod
    def _pick(
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
        with self._model_lock:
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
            with self._model_lock:
                done = computer.subset_grams([examples[r] for r in ordered], subsets, prefix=self._query_factors(state))
            grams.update(zip(group, done, strict=True))
        return [grams[key] for key in keys]

    def explain(self, query: Example, options: ExplainOptions | None = None, **kwargs: Any) -> Explanation:
        """Explain one output: options as an `ExplainOptions` or as keyword arguments."""
        options = self.resolve(options or ExplainOptions(**kwargs))
        self.check_options(options)  # before any model work: a bad option costs no forward/backward
        t0 = time.perf_counter()
        state = self.prepare(query, keep_factors=options.score_space == "full")
        return self._finish(state, options, (time.perf_counter() - t0) * 1e3)

    def check_options(self, options: ExplainOptions) -> None:
        """Raise `InvalidInputError` unless `options` are valid for this index and configuration
        (k up to `ExplainConfig.max_k`, the estimator's orderings, ...); no model work."""
        options.check(self.config, self.store.estimator(options.estimator).signed)

    def compare(
        self,
        query: Example,
        options: ExplainOptions | None = None,
        *,
        strategies: Sequence[str] | None = None,
        ks: Sequence[int] | None = None,
    ) -> Comparison:
        """Score several selections for one query, featurised ONCE.

        `by_strategy`: each of `strategies` (default `COMPARE_STRATEGIES` plus
        `options.strategy`) at `options.k`; `by_k`: `options.strategy` at each of `ks`
        (default `COMPARE_KS` up to `max_k` and the index size, plus `options.k`), ascending.
        Every combination is checked before the model runs, so bad options cost nothing.
        In the full space every selection is scored from shared Grams (`full_scores`).
        """
        options = self.resolve(options or ExplainOptions())
        if strategies is None:
            strategies = (*COMPARE_STRATEGIES, options.strategy)
        if ks is None:
            limit = min(self.config.max_k, self.store.n)
            ks = [k for k in COMPARE_KS if k <= limit] + [options.k]
        names = list(dict.fromkeys(strategies))
        sizes = sorted(set(ks))
        if not names or not sizes:
            raise InvalidInputError("compare needs at least one strategy and one k")
        for name in names:
            self.check_options(replace(options, strategy=name))
        for k in sizes:
            self.check_options(replace(options, k=k))
        t0 = time.perf_counter()
        state = self.prepare(query, keep_factors=options.score_space == "full")
        t1 = time.perf_counter()
        points = list(dict.fromkeys([(name, options.k) for name in names] + [(options.strategy, k) for k in sizes]))
        asked = {p: replace(options, strategy=p[0], k=p[1]) for p in points}
        proposed = {p: self.proposals(state, asked[p]) for p in points}
        flat = [prop for p in points for prop in proposed[p]]
        scores, projected = self._score_proposals(state, flat, options)
        scored: dict[tuple[str, int], ComparePoint] = {}
        start = 0
        for p in points:
            n = len(proposed[p])
            best = self._pick(asked[p], proposed[p], scores[start : start + n], projected[start : start + n])
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
            with self._model_lock:  # cheap per-query checks first, so one bad query does not split the batch
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
        scored = self._pick(options, proposals, *self._score_proposals(state, proposals, options))
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
