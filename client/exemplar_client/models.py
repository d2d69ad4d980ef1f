"""Typed requests and responses of the Exemplar API (tests/test_client.py checks them against
the service's OpenAPI document, `docs/openapi.json`, field by field).

Requests forbid unknown fields (a typo fails here, not as a 422 later); responses allow them, so
a newer server with more fields still parses.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

REQUEST = ConfigDict(extra="forbid")
RESPONSE = ConfigDict(extra="allow")


class Message(BaseModel):
    """One turn of a conversation: role system, user or assistant."""

    model_config = REQUEST

    role: str
    content: str


class Query(BaseModel):
    """`text` (+ optional `label`) for a classifier's index; `prompt` + `response` (or `messages`,
    the last turn the assistant's) for a causal LM's."""

    model_config = REQUEST

    text: str | None = None
    text_pair: str | None = None
    label: str | None = None
    prompt: str | None = None
    response: str | None = None
    messages: list[Message] | None = None


class Options(BaseModel):
    """How to explain; None leaves the choice to the server (`GET /v1/index` lists the choices)."""

    model_config = REQUEST

    k: int | None = None
    strategy: str | None = None
    estimator: str | None = None
    ordering: str | None = None
    lam: float | None = None
    pool_size: int | None = None
    seed: int | None = None
    solver: str | None = None
    score_space: str | None = None
    preset: str | None = None
    rerank: str | None = None


class ExplainRequest(Query, Options):
    """`POST /v1/explain`: a query and how to explain it. A causal-LM query without `response` has
    the model generate one (greedy, at most `max_new_tokens`) and explains that."""

    max_new_tokens: int | None = None


class CompareRequest(Query, Options):
    """`POST /v1/compare`: a query scored under several strategies (at `k`) and several k."""

    strategies: list[str] | None = None
    ks: list[int] | None = None


class JobRequest(BaseModel):
    """`POST /v1/jobs`: up to 1000 queries explained with the same options by a worker."""

    model_config = REQUEST

    queries: list[Query] = Field(min_length=1)
    options: Options = Field(default_factory=Options)


class Example(BaseModel):
    """A selected (or looked-up) training example with its simplex weight and influence."""

    model_config = RESPONSE

    id: str
    source: str
    text: str | None = None
    text_pair: str | None = None
    label: str | None = None
    prompt: str | None = None
    response: str | None = None
    messages: list[Message] | None = None
    meta: dict[str, Any] = Field(default_factory=dict)
    weight: float | None = None
    influence: float | None = None


class Explanation(BaseModel):
    """k training examples, their simplex weights and the Selection Relevance Score (dB)."""

    model_config = RESPONSE

    prediction: dict[str, Any]
    examples: list[Example]
    score_db: float | None
    score_ratio: float
    score_space: str
    solver: str
    projected_score_db: float | None
    n_weighted: int
    strategy: str
    preset: str
    options: dict[str, Any]
    k: int
    index: dict[str, Any]
    timings_ms: dict[str, float]
    reason: str | None = None
    generated_response: str | None = None


class ComparePoint(BaseModel):
    model_config = RESPONSE

    strategy: str
    k: int
    n_examples: int
    score_db: float | None
    score_ratio: float
    projected_score_db: float | None = None
    reason: str | None = None


class Comparison(BaseModel):
    """Scores of several strategies at `k` (`by_strategy`) and of `strategy` at several k (`by_k`)."""

    model_config = RESPONSE

    prediction: dict[str, Any]
    k: int
    strategy: str
    options: dict[str, Any]
    by_strategy: list[ComparePoint]
    by_k: list[ComparePoint]
    index: dict[str, Any]
    timings_ms: dict[str, float]


class Description(BaseModel):
    """A strategy's or estimator's display label and one-sentence summary."""

    model_config = RESPONSE

    label: str
    summary: str


class IndexInfo(BaseModel):
    """The served index and the choices a request can make."""

    model_config = RESPONSE

    task: str
    n_examples: int
    estimators: list[str]
    strategies: list[str]
    orderings: list[str]
    solvers: list[str]
    score_spaces: list[str]
    score_space: str
    max_k: int
    pool_size: int
    labels: list[str] | None = None
    strategy_descriptions: dict[str, Description] = Field(default_factory=dict)
    estimator_descriptions: dict[str, Description] = Field(default_factory=dict)


class JobError(BaseModel):
    """A batch job's entry for a query that could not be explained."""

    model_config = RESPONSE

    error: str
    error_type: str


class Job(BaseModel):
    """A batch job: its state, progress and, once finished, one result (or error) per query."""

    model_config = RESPONSE

    id: str
    status: str
    total: int
    done: int = 0
    results: list[dict[str, Any]] | None = None
    error: str | None = None
    created_at: str | None = None
    ended_at: str | None = None

    @property
    def finished(self) -> bool:
        """No further change will come: finished, failed, canceled or stopped."""
        return self.status in ("finished", "failed", "canceled", "stopped")


MODELS_BY_SCHEMA: dict[str, type[BaseModel]] = {
    "QueryFields": Query,
    "Message": Message,
    "OptionFields": Options,
    "ExplainRequest": ExplainRequest,
    "CompareRequest": CompareRequest,
    "JobRequest": JobRequest,
    "ExampleOut": Example,
    "ExplainResponse": Explanation,
    "ComparePointOut": ComparePoint,
    "CompareResponse": Comparison,
    "IndexInfo": IndexInfo,
    "Description": Description,
    "JobStatus": Job,
}
"""The OpenAPI schema each model mirrors (names as in `docs/openapi.json`)."""
