"""Between the API's models and the core's: request fields to `ExplainOptions`, results to responses."""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

from app.schemas import ComparePointOut, CompareResponse, ExampleOut, ExplainResponse, OptionFields
from exemplar.explain import Explainer
from exemplar.options import ExplainOptions
from exemplar.results import ComparePoint, Comparison, Explanation
from exemplar.store import StoredExample


def to_example_out(ex: StoredExample) -> ExampleOut:
    """A looked-up training example (`GET /v1/examples/{id}`); selected ones come from `Explanation.to_dict`."""
    return ExampleOut(**{k: v for k, v in asdict(ex).items() if k != "row"})


def to_response(result: Explanation, index: dict[str, Any]) -> ExplainResponse:
    """The response of `/v1/explain`: the core's one serialisation, also a job's results (`worker.jobs`)."""
    return ExplainResponse(**result.to_dict(index))


def to_compare_response(result: Comparison, index: dict[str, Any]) -> CompareResponse:
    def point(p: ComparePoint) -> ComparePointOut:
        db = p.score_db if math.isfinite(p.score_db) else None
        projected = p.projected_score_db if math.isfinite(p.projected_score_db) else None
        return ComparePointOut(
            strategy=p.strategy,
            k=p.k,
            n_examples=p.n_examples,
            score_db=db,
            score_ratio=p.score_ratio,
            projected_score_db=projected,
            reason=p.reason,
        )

    return CompareResponse(
        prediction=result.prediction,
        k=result.options.k,
        strategy=result.options.strategy,
        options=asdict(result.options),
        by_strategy=[point(p) for p in result.by_strategy],
        by_k=[point(p) for p in result.by_k],
        index=index,
        timings_ms={name: round(ms, 3) for name, ms in result.timings_ms.items()},
    )


def options_of(body: OptionFields) -> ExplainOptions:
    """The core's options from a request carrying the `OptionFields`."""
    return ExplainOptions(
        k=body.k,
        strategy=body.strategy,
        lam=body.lam,
        seed=body.seed,
        estimator=body.estimator,
        ordering=body.ordering,
        pool_size=body.pool_size,
        solver=body.solver,
        preset=body.preset,
        score_space=body.score_space,
        rerank=body.rerank,
    )


def describe(explainer: Explainer) -> dict[str, Any]:
    """The served index version: its manifest summary, version directory name and path."""
    store = explainer.store
    return {**store.manifest.summary(), "version": store.path.name, "path": str(store.path)}
