"""Request and response models of the HTTP API."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal, Self, TypeAlias

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer, model_validator

from exemplar.estimators import ESTIMATOR_NAMES
from exemplar.options import MAX_POOL_SIZE, RERANKS, SCORE_SPACES
from exemplar.relevance import SOLVERS
from exemplar.search import PRESETS
from exemplar.strategies import ORDERINGS, STRATEGY_NAMES

# The names a request can use come from the core's registries (one place each); the schema
# enumerates them, so the OpenAPI document and validation follow the registries.
if TYPE_CHECKING:
    Strategy: TypeAlias = str
    Estimator: TypeAlias = str
    Ordering: TypeAlias = str
    Solver: TypeAlias = str
    Preset: TypeAlias = str
    ScoreSpace: TypeAlias = str
    Rerank: TypeAlias = str
else:
    Strategy = Literal[STRATEGY_NAMES]
    Estimator = Literal[ESTIMATOR_NAMES]
    Ordering = Literal[ORDERINGS]
    Solver = Literal[SOLVERS]
    Preset = Literal[PRESETS]
    ScoreSpace = Literal[SCORE_SPACES]
    Rerank = Literal[RERANKS]


STRICT = ConfigDict(extra="forbid", strict=True)
"""Request models: unknown fields are refused and nothing is coerced ("5" is not a number, true is not 1)."""


class Message(BaseModel):
    """One turn of a conversation."""

    model_config = STRICT

    role: Literal["system", "user", "assistant"]
    content: str = Field(min_length=1)


class QueryFields(BaseModel):
    """A query: `text` (+ optional `label`) for a classifier index, `prompt` + `response` for a causal LM."""

    model_config = STRICT

    text: str | None = Field(None, min_length=1, description="classification: the input text")
    text_pair: str | None = Field(
        None, min_length=1, description="classification: the second text of a sentence pair (with `text`)"
    )
    label: str | None = Field(
        None, min_length=1, description="classification: label to explain (default: the model's prediction)"
    )
    prompt: str | None = Field(None, min_length=1, description="causal LM: the prompt")
    response: str | None = Field(
        None,
        min_length=1,
        description="causal LM: the response to explain (teacher-forced); POST /v1/explain without it has the "
        "model generate one (greedy, `max_new_tokens`) and explains that",
    )

    messages: list[Message] | None = Field(
        None,
        min_length=2,
        description="causal LM, instead of prompt and response: a conversation (system, user, assistant turns) "
        "rendered with the model's chat template; its last turn, the assistant's, is the response explained. "
        "POST /v1/explain with the user's turn last has the model answer it (greedy) and explains that",
    )

    @model_validator(mode="after")
    def one_query_form(self) -> Self:
        has_text = self.text is not None
        has_pair = self.prompt is not None or self.response is not None
        if has_text + has_pair + (self.messages is not None) != 1:
            raise ValueError("send one of: 'text' (and optionally 'label'), 'prompt' (and 'response'), or 'messages'")
        if self.messages is not None and self.messages[-1].role == "system":
            raise ValueError("the last of 'messages' must be the assistant's turn (or the user's, to have it answered)")
        if self.response is not None and self.prompt is None:
            raise ValueError("'response' goes with 'prompt'")
        if self.text_pair is not None and not has_text:
            raise ValueError("'text_pair' goes with 'text' (classification of a sentence pair)")
        if self.label is not None and not has_text:
            raise ValueError("'label' goes with 'text' (classification); causal-LM queries use 'prompt' and 'response'")
        return self


class OptionFields(BaseModel):
    """How to explain: k, strategy, estimator and their parameters."""

    model_config = STRICT

    k: int = Field(
        5, ge=1, description="number of training examples to return, at most the server's `max_k` (`GET /v1/index`)"
    )
    strategy: Strategy = Field(
        "reconstruct",
        description="reconstruct is the default (the highest score in the model's own space, and the largest "
        "effect when the examples are trained on with their weights: docs/method.md); balanced: the paper's weighted "
        "facility location (influence + representativeness) over the "
        "candidate pool; topk: the k first under `ordering`; random: k uniformly random training examples (seeded); "
        "divine / aide: the paper's baselines (Bhatt et al. 2021, Nematov et al. 2024); self: the query itself when it "
        "is a training example; reconstruct (ours): local search maximising the score, from greedy and from the "
        "pool's best simplex mixture, refined by swaps, over the gradients nearest the query's and most aligned with it "
        "(max(100, 4k) of each unless pool_size is given) plus those in the best simplex mixture of the whole index (up to 2,048 rows; above, of the nearest, aligned and anti-aligned ones); auto: runs topk, balanced and reconstruct and returns the best-scoring one with the reason",
    )
    estimator: Estimator = Field(
        "grad_dot",
        description="influence estimator. grad_dot: I = -<g_train, g_query> (unbounded; negative = helpful); grad_cos: "
        "I = -cos(g_train, g_query) in [-1, 1]; datainf: I = -<g_train, M g_query> with DataInf's per-layer "
        "preconditioner (negative = helpful); bm25: lexical Okapi BM25 similarity >= 0 over token ids (larger = more "
        "related; no helpful/harmful orderings); tracin: I = -sum_c lr_c <g_train^c, g_query^c> over the index's "
        "checkpoints (only for indexes built with --checkpoint; negative = helpful)",
    )
    ordering: Ordering = Field(
        "most_influential",
        description="candidate ordering: largest |I|, smallest |I|, most negative I (helpful), most positive I (harmful)",
    )
    pool_size: int | None = Field(None, ge=1, le=MAX_POOL_SIZE, description="candidate pool m (default 100)")
    solver: Solver = Field(
        "paper",
        description="score weights: paper = pinv least squares projected onto the simplex (the paper's); exact = the "
        "true simplex-constrained least-squares optimum",
    )
    preset: Preset = Field(
        "balanced",
        description="search effort on an approximate index (IVF, HNSW, PQ; see GET /v1/index): exact = full scan; "
        "balanced = recall@100 >= 0.95 in benchmarks/search.py; fast = fewer lists / a narrower beam. Candidates are "
        "always re-scored exactly, so the preset only changes which candidates are found. An exact (Flat) index "
        "ignores it",
    )
    score_space: ScoreSpace | None = Field(
        None,
        description="where the score and the weights are computed: full = on the examples' exact gradients w.r.t. "
        "the model's tracked weights (one forward/backward of the k examples; the paper's definition); projected = on "
        "the index's projected vectors (no model work, for bulk evaluation). Default: the server's "
        "EXEMPLAR_SCORE_SPACE (full). Retrieval and selection always use the projection",
    )
    rerank: Rerank = Field(
        "none",
        description="full: re-order the candidate pool (pool_size rows found in the projection) by exact full-space "
        "Grad-Dot influence before topk, balanced, divine or aide select from it (one forward/backward of the pool; "
        "estimator grad_dot only); the returned influences are then the exact ones. none: the projected influence",
    )
    lam: float = Field(1.0, ge=0.0, le=1.0, description="balanced only: 1 = pure coverage of the pool, 0 = top-k")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="random only: the seed")


class ExplainRequest(QueryFields, OptionFields):
    """A query and how to explain it."""

    model_config = STRICT

    max_new_tokens: int | None = Field(
        None,
        ge=1,
        description="causal LM with a prompt and no response: the most tokens to generate (default and upper limit: "
        "the server's max_new_tokens, 128 unless configured)",
    )


class CompareRequest(QueryFields, OptionFields):
    """A query and options, scored under several strategies (at `k`) and several k (for `strategy`)."""

    model_config = STRICT

    strategies: list[Strategy] | None = Field(
        None,
        min_length=1,
        max_length=8,
        description="strategies to compare at `k` (default: topk, balanced, divine, aide, reconstruct, random and "
        "`strategy`)",
    )
    ks: list[Annotated[int, Field(ge=1)]] | None = Field(
        None,
        min_length=1,
        max_length=8,
        description="k values to score `strategy` at (default: 1, 5, 10, 25 up to the index size and the server's "
        "max_k, and `k`)",
    )


class ComparePointOut(BaseModel):
    """One scored selection."""

    strategy: Strategy
    k: int = Field(description="k asked for")
    n_examples: int = Field(description="examples actually selected (fewer than k when the pool or index is smaller)")
    score_db: float | None = Field(description="Selection Relevance Score in dB; null when the query gradient is zero")
    score_ratio: float
    projected_score_db: float | None = Field(
        None, description="the same selection's score on the projected vectors (equals score_db when projected)"
    )
    reason: str | None = Field(None, description="auto only: which strategy won and why")


class CompareResponse(BaseModel):
    """Scores of one query's selections, computed from ONE query gradient."""

    prediction: dict[str, Any]
    k: int
    strategy: Strategy
    options: dict[str, Any] = Field(description="the options every selection shares (k and strategy vary)")
    by_strategy: list[ComparePointOut] = Field(description="each compared strategy at `k`")
    by_k: list[ComparePointOut] = Field(description="`strategy` at each k, ascending")
    index: dict[str, Any]
    timings_ms: dict[str, float]


class Description(BaseModel):
    """How a client shows a strategy or an estimator (from the core's registries)."""

    label: str
    summary: str


class IndexInfo(BaseModel):
    """The served index (its manifest summary) and the choices a client can make against it."""

    model_config = ConfigDict(extra="allow")

    task: Literal["classification", "causal-lm"]
    n_examples: int
    labels: list[str] | None = Field(None, description="classification: the model's labels")
    estimators: list[Estimator] = Field(description="estimators this index supports")
    strategies: list[Strategy]
    orderings: list[Ordering]
    solvers: list[Solver]
    score_spaces: list[ScoreSpace]
    score_space: ScoreSpace = Field(description="the score space of requests that do not choose one")
    max_k: int = Field(description="largest k the service accepts")
    pool_size: int = Field(description="default candidate pool m")
    strategy_descriptions: dict[str, Description] = Field(
        default_factory=dict, description="each listed strategy's display label and one-sentence summary"
    )
    estimator_descriptions: dict[str, Description] = Field(
        default_factory=dict, description="each listed estimator's display label and one-sentence summary"
    )


MAX_JOB_QUERIES = 1000


class JobRequest(BaseModel):
    """A batch of queries explained with the same options by a worker."""

    model_config = STRICT

    queries: list[QueryFields] = Field(min_length=1, max_length=MAX_JOB_QUERIES, description="1..1000 queries")
    options: OptionFields = Field(default_factory=OptionFields, description="explanation options for every query")


class JobStatus(BaseModel):
    """A batch job: its state, progress and, once finished, one result (or error) per query."""

    id: str
    status: str = Field(description="queued | started | finished | failed | canceled | stopped | scheduled | deferred")
    done: int = Field(0, description="queries explained so far")
    total: int
    results: list[dict[str, Any]] | None = Field(None, description="when finished: per query, an explanation or error")
    error: str | None = Field(None, description="when failed: why")
    created_at: str | None = None
    ended_at: str | None = None


class ExampleOut(BaseModel):
    """A selected (or looked-up) training example."""

    id: str
    text: str | None = None
    text_pair: str | None = None
    label: str | None = None
    prompt: str | None = None
    response: str | None = None
    messages: list[Message] | None = None
    source: str
    meta: dict[str, Any] = Field(default_factory=dict)
    weight: float | None = Field(
        None,
        description="simplex weight in the reconstruction (>= 0, sums to 1 over the selection; 0: selected but not part "
        "of the reconstruction)",
    )
    influence: float | None = Field(
        None,
        description="the request's estimator's influence (Grad-Dot: I = -<g_train, g_query>, on the projected "
        "vectors); negative = helpful (lowers the query loss), positive = harmful",
    )

    @model_serializer(mode="wrap")
    def drop_unset(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Fields that do not apply to the index's task (text vs prompt) are left out, not null."""
        data: dict[str, Any] = handler(self)
        return {k: v for k, v in data.items() if v is not None}


class ExplainResponse(BaseModel):
    """k training examples, their simplex weights and the Selection Relevance Score."""

    prediction: dict[str, Any]
    examples: list[ExampleOut]
    score_db: float | None = Field(
        description="Selection Relevance Score in dB: > 0 the weighted examples reconstruct the query gradient better than "
        "nothing, < 0 worse; null when the query gradient is zero (nothing to explain)"
    )
    score_ratio: float = Field(description="the score as a linear ratio Var(g) / (Var(residual) + 1e-8)")
    score_space: ScoreSpace = Field(
        description="where score_db and the weights were computed: full = the exact gradients of the model's tracked "
        "weights; projected = the index's projected vectors"
    )
    solver: Solver = Field(description="the coefficient solver of the weights and the score")
    projected_score_db: float | None = Field(
        description="the same selection's score on the index's projected vectors (what retrieval and selection see)"
    )
    n_weighted: int = Field(
        description="how many examples carry weight (> 1e-6): the reconstruction uses only these; an example with "
        "weight 0 was selected but adds nothing to it"
    )
    strategy: Strategy
    reason: str | None = Field(None, description="auto only: why this strategy was chosen")
    preset: Preset = Field(description="the search preset used to find the candidates")
    options: dict[str, Any] = Field(description="the options the explanation was computed with")
    k: int
    index: dict[str, Any]
    timings_ms: dict[str, float]
    generated_response: str | None = Field(
        None,
        description="causal LM, when the request sent a prompt and no response (or a conversation ending with the "
        "user's turn): what the model generated (greedy) and this explanation explains",
    )


class ErrorBody(BaseModel):
    """Every error response has this shape."""

    error: str
    error_type: str
    request_id: str


class Health(BaseModel):
    status: str
    details: dict[str, Any] = Field(default_factory=dict)
