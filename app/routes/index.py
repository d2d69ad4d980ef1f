"""`GET /v1/examples/{id}` (one training example) and `GET /v1/index` (the served version and what it offers)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from app.deps import PROTECTED, get_explainer, in_executor
from app.routes import ERRORS
from app.schemas import Description, ExampleOut, IndexInfo
from app.serialise import describe, to_example_out
from exemplar.estimators import ESTIMATORS
from exemplar.options import SCORE_SPACES
from exemplar.relevance import SOLVERS
from exemplar.strategies import ORDERINGS, STRATEGIES

router = APIRouter()


@router.get(
    "/v1/examples/{example_id:path}",
    response_model=ExampleOut,
    responses=ERRORS,
    tags=["examples"],
    dependencies=PROTECTED,
)
async def get_example(example_id: str, request: Request) -> ExampleOut:
    """One training example of the served index, by id."""
    explainer = get_explainer(request)
    return to_example_out(await in_executor(request, lambda: explainer.store.example_by_id(example_id)))


@router.get("/v1/index", response_model=IndexInfo, responses=ERRORS, tags=["index"], dependencies=PROTECTED)
async def describe_index(request: Request) -> IndexInfo:
    """The served index version (manifest summary, search index type and presets, version directory, when
    it started being served) and the estimators, strategies and limits a request may use."""
    explainer = get_explainer(request)
    estimators = explainer.estimators.names()
    return IndexInfo(
        **describe(explainer),
        served_since=request.app.state.served_since,
        estimators=estimators,
        strategies=list(STRATEGIES),
        orderings=list(ORDERINGS),
        solvers=list(SOLVERS),
        score_spaces=list(SCORE_SPACES),
        score_space=explainer.config.score_space,
        max_k=explainer.config.max_k,
        pool_size=explainer.config.pool_size,
        strategy_descriptions={n: Description(label=s.label, summary=s.summary) for n, s in STRATEGIES.items()},
        estimator_descriptions={
            n: Description(label=ESTIMATORS[n].label, summary=ESTIMATORS[n].summary) for n in estimators
        },
    )
