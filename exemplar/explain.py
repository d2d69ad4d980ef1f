"""The Explainer: query gradient -> candidates -> selection -> simplex weights -> score.

Influence is Grad-Dot with the paper's sign convention, `I(z, x') = -<g_z, g_x'>`
(negative = helpful: a gradient step on `z` lowers the query's loss). "Most influential"
candidates (largest |I|) come from two inner-product searches, proponents (largest
`<g_z, g>`) and opponents (largest `<g_z, -g>`), merged and re-scored exactly against the
stored vectors.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from exemplar import selection
from exemplar.errors import InvalidInputError
from exemplar.gradients import Featurizer, KroneckerFeaturizer, ProjectionConfig
from exemplar.models import LoadedModel, load_model
from exemplar.relevance import selection_relevance
from exemplar.store import FaissGradientStore, StoredExample
from exemplar.tasks import Example, make_task

STRATEGIES = ("balanced", "topk", "random")


@dataclass(frozen=True)
class ExplainConfig:
    """Limits and defaults of explanation requests."""

    pool_size: int = 100
    max_k: int = 50


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
    timings_ms: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (a non-finite score becomes None)."""
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
            "strategy": self.strategy,
            "timings_ms": self.timings_ms,
        }


class Explainer:
    """Chains featuriser, store, estimator, selection and score for one served index.

    Model work is serialised by a lock: PyTorch autograd on one shared model is not safe
    under concurrent calls (see docs/architecture.md).
    """

    def __init__(self, store: FaissGradientStore, featurizer: Featurizer, config: ExplainConfig | None = None) -> None:
        self.store = store
        self.featurizer = featurizer
        self.config = config or ExplainConfig()
        self._model_lock = threading.Lock()

    @classmethod
    def from_index(
        cls, index_dir: str | Path, config: ExplainConfig | None = None, *, batch_size: int = 16
    ) -> Explainer:
        """Open an index and the model it was built from; refuse any mismatch."""
        store = FaissGradientStore(index_dir)
        m = store.manifest
        loaded = load_model(m.model_dir, m.task, m.adapter_dir)
        featurizer = build_featurizer(
            loaded,
            ProjectionConfig(params=m.params, proj_dim=m.proj_dim, seed=m.seed),
            m.max_length,
            batch_size=batch_size,
        )
        m.check_model(
            task=loaded.task,
            model_checksum=loaded.checksum,
            params=m.params,
            layer_names=featurizer.layer_names,
            proj_dim=m.proj_dim,
            seed=m.seed,
        )
        return cls(store, featurizer, config)

    def query_gradient(self, query: Example) -> tuple[np.ndarray, dict[str, Any]]:
        """The query's projected gradient `(d,)` and the model's prediction."""
        with self._model_lock:
            feats = self.featurizer.featurize([query])
        prediction = dict(feats.predictions[0])
        prediction["loss"] = feats.losses[0]
        prediction["truncated"] = feats.truncated[0]
        return feats.vectors[0], prediction

    def candidates(self, grad: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
        """The `m` most influential rows (largest |I|) and their exact influence."""
        _, pro = self.store.search(grad, m)
        _, opp = self.store.search(-grad, m)
        rows = np.unique(np.concatenate([pro, opp]))
        influence = -(self.store.vectors_at(rows) @ grad)
        order = selection.most_influential_order(influence)[:m]
        return rows[order], influence[order]

    def explain(
        self, query: Example, k: int = 5, strategy: str = "balanced", lam: float = 1.0, seed: int = 0
    ) -> Explanation:
        if not 1 <= k <= self.config.max_k:
            raise InvalidInputError(f"k must be between 1 and {self.config.max_k}; got {k}")
        if strategy not in STRATEGIES:
            raise InvalidInputError(f"unknown strategy {strategy!r}; choose one of: {', '.join(STRATEGIES)}")
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        grad, prediction = self.query_gradient(query)
        t1 = time.perf_counter()
        timings["gradient"] = (t1 - t0) * 1e3
        if strategy == "random":
            rows = selection.random_selection(self.store.n, k, seed)
            influence = -(self.store.vectors_at(rows) @ grad)
            picked = np.arange(len(rows))
            t2 = time.perf_counter()
        else:
            rows, influence = self.candidates(grad, self.config.pool_size)
            t2 = time.perf_counter()
            if strategy == "topk":
                picked = selection.topk(influence, k)
            else:
                vectors = self.store.vectors_at(rows)
                picked = selection.facility_location(influence, vectors, k, lam=lam, pool_size=self.config.pool_size)
        timings["search"] = (t2 - t1) * 1e3
        chosen_rows = rows[picked]
        t3 = time.perf_counter()
        timings["selection"] = (t3 - t2) * 1e3
        relevance = selection_relevance(grad, self.store.vectors_at(chosen_rows))
        t4 = time.perf_counter()
        timings["score"] = (t4 - t3) * 1e3
        examples = self.store.examples_at(chosen_rows.tolist())
        selected = [
            Selected(ex, float(w), float(i))
            for ex, w, i in zip(examples, relevance.weights, influence[picked], strict=True)
        ]
        timings["total"] = (time.perf_counter() - t0) * 1e3
        return Explanation(prediction, selected, float(relevance.db), float(relevance.ratio), strategy, timings)


def build_featurizer(
    loaded: LoadedModel, config: ProjectionConfig, max_length: int, *, batch_size: int = 16
) -> KroneckerFeaturizer:
    """The one featuriser used at build time and query time."""
    task = make_task(loaded.task, loaded.tokenizer, label2id=loaded.label2id, max_length=max_length)
    return KroneckerFeaturizer(loaded.model, task, config, batch_size=batch_size)


def default_params(loaded: LoadedModel) -> str:
    """LoRA matrices when an adapter is loaded (as in the paper), otherwise every linear layer."""
    return "lora" if loaded.adapter_dir is not None else "linear"


def examples_from_rows(rows: Sequence[dict[str, Any]], task: str) -> list[Example]:
    """Convert already-validated JSON rows to examples (see index_builder for validation)."""
    fields = ("text", "label") if task == "classification" else ("prompt", "response")
    return [
        Example(
            id=str(r["id"]),
            source=str(r.get("source", "")),
            meta=dict(r.get("meta", {})),
            **{f: r.get(f) for f in fields},
        )
        for r in rows
    ]
