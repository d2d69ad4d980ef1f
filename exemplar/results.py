"""What an explanation returns: `Explanation` (the selected examples with their simplex
weights and influence, and the score) and `Comparison` (several selections of one query
scored side by side). `Explanation.to_dict` is the one serialised form every shell returns.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from exemplar.options import ExplainOptions
from exemplar.store import StoredExample

WEIGHT_ZERO = 1e-6
"""A simplex weight at or below this counts as zero: that example takes no part in the reconstruction."""


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
