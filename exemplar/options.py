"""What an explanation request may ask for (`ExplainOptions`) and the deployment's limits and
defaults (`ExplainConfig`); `ExplainOptions.check` validates a request against both before any
model work. Names come from the registries (`exemplar.strategies.STRATEGIES`,
`exemplar.estimators.ESTIMATORS`, `exemplar.relevance.SOLVERS`, `exemplar.search.PRESETS`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from exemplar.errors import InvalidInputError
from exemplar.estimators import estimator_kind
from exemplar.relevance import SOLVERS
from exemplar.search import DEFAULT_PRESET, check_preset
from exemplar.strategies import COMPARED, ORDERINGS, strategy

SCORE_SPACES = ("full", "projected")
"""Where a selection is scored: "full" = the model's own gradients of the tracked weights (exact, one
forward/backward of the selection); "projected" = the index's projected vectors (no model work)."""
MAX_POOL_SIZE = 10_000
"""The largest candidate pool a request may ask for (`ExplainOptions.pool_size`; the API schema reads it)."""
RERANKS = ("none", "full")
"""`rerank`: "full" re-orders the candidate pool by exact full-space Grad-Dot influence (`Explainer.rerank`)."""
HEAVY_K = 25
"""Above this k a request counts as heavy (`ExplainOptions.heavy`)."""
RERANK_MAX_POOL = 1000
"""`rerank: "full"` runs a forward/backward of every candidate: larger pools are refused (about 13 ms
per candidate for MiniLM on 2 cores, so 1,000 already hold the model for over 10 s)."""


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

    def heavy(self, config: ExplainConfig) -> bool:
        """Whether this request may hold the service for long (seconds to a minute): a candidate pool
        above the deployment's default, exact full-space re-ranking, or k above `HEAVY_K`. The API
        runs heavy requests on their own lane, so they take the model only in short turns."""
        return (self.pool_size or config.pool_size) > config.pool_size or self.rerank == "full" or self.k > HEAVY_K

    def check(self, config: ExplainConfig) -> None:
        """Raise `InvalidInputError` unless these options are valid under `config` (no model work;
        whether the served index has the estimator's files is checked when it is opened)."""
        if not 1 <= self.k <= config.max_k:
            raise InvalidInputError(f"k must be between 1 and {config.max_k}; got {self.k}")
        strategy(self.strategy)
        signed = estimator_kind(self.estimator).signed
        if self.ordering not in ORDERINGS:
            raise InvalidInputError(f"unknown ordering {self.ordering!r}; choose one of: {', '.join(ORDERINGS)}")
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


COMPARE_KS = (1, 5, 10, 25)
"""The k `compare` scores by default, capped by `max_k` and the index size."""


def compare_points(
    options: ExplainOptions,
    strategies: Sequence[str] | None,
    ks: Sequence[int] | None,
    *,
    max_k: int,
    n: int,
) -> tuple[list[str], list[int], list[tuple[str, int]]]:
    """What `compare` makes: its strategies (default `COMPARED` plus `options.strategy`), its ks
    (default `COMPARE_KS` up to `max_k` and `n`, plus `options.k`; ascending) and the distinct
    (strategy, k) points: each strategy at `options.k`, then `options.strategy` at each k."""
    if strategies is None:
        strategies = (*COMPARED, options.strategy)
    if ks is None:
        ks = [k for k in COMPARE_KS if k <= min(max_k, n)] + [options.k]
    names = list(dict.fromkeys(strategies))
    sizes = sorted(set(ks))
    if not names or not sizes:
        raise InvalidInputError("compare needs at least one strategy and one k")
    points = list(dict.fromkeys([(name, options.k) for name in names] + [(options.strategy, k) for k in sizes]))
    return names, sizes, points
