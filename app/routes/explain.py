"""`POST /v1/explain` (one explanation, cached when Redis is there) and `POST /v1/compare` (strategies and k)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from app.cache import ExplanationCache, index_version, request_key
from app.deps import JSON_BODY, admit, explain_on_model, get_explainer, get_settings, in_executor, to_query
from app.observability import Metrics
from app.routes import ERRORS
from app.schemas import CompareRequest, CompareResponse, ExplainRequest, ExplainResponse, Message
from app.serialise import options_of, to_compare_response, to_response
from exemplar.errors import InvalidInputError
from exemplar.explain import Explainer
from exemplar.generation import generate_response
from exemplar.options import compare_points
from exemplar.results import Comparison

router = APIRouter()


async def generate(request: Request, explainer: Explainer, body: ExplainRequest) -> str:
    """The model's greedy response to the request's prompt, on the model lane (`exemplar.generation`)."""
    limit = get_settings(request).max_new_tokens
    wanted = body.max_new_tokens or limit
    if wanted > limit:
        raise InvalidInputError(f"max_new_tokens: at most {limit} on this server; ask for fewer")
    limit_chars = get_settings(request).max_text_chars
    prompt: str | list[dict[str, str]]
    if body.messages is not None:
        prompt = [turn.model_dump() for turn in body.messages]
        too_long = any(len(turn["content"]) > limit_chars for turn in prompt)
    else:
        prompt = body.prompt or ""
        too_long = len(prompt) > limit_chars
    if too_long:
        raise InvalidInputError(f"the prompt is longer than {limit_chars} characters; shorten it")
    return str(await in_executor(request, lambda: generate_response(explainer, prompt, wanted)))


@router.post("/v1/explain", response_model=ExplainResponse, responses=ERRORS, tags=["explain"], dependencies=JSON_BODY)
async def explain(body: ExplainRequest, request: Request, response: Response) -> Any:
    """Explain one output with k training examples, their simplex weights and the score in dB.

    With a Redis cache configured, an identical request (defaults filled in) to the same
    index version is answered from the cache (`X-Cache: hit`).
    """
    explainer = get_explainer(request)
    manifest = explainer.store.manifest
    cache: ExplanationCache = request.app.state.cache
    if body.score_space is None:  # the key holds the request with its defaults filled in
        body = body.model_copy(update={"score_space": explainer.config.score_space})
    asks = body.prompt is not None and body.response is None
    asks = asks or (body.messages is not None and body.messages[-1].role == "user")
    generating = asks and manifest.task == "causal-lm"
    if generating and body.max_new_tokens is None:  # this server's limit, as replicas sharing Redis may differ
        body = body.model_copy(update={"max_new_tokens": get_settings(request).max_new_tokens})
    key = request_key(index_version(manifest), body.model_dump(mode="json"))
    if cache.enabled:
        cached = await asyncio.to_thread(cache.get, key)
        metrics: Metrics = request.app.state.metrics
        metrics.cache.labels("miss" if cached is None else "hit").inc()
        if cached is not None:
            return JSONResponse(cached, headers={"X-Cache": "hit"})
    response.headers["X-Cache"] = "miss" if cache.enabled else "off"
    generated = None
    if generating:
        generated = await generate(request, explainer, body)
        if body.messages is not None:
            answer = Message(role="assistant", content=generated)
            body = body.model_copy(update={"messages": [*body.messages, answer]})
        else:
            body = body.model_copy(update={"response": generated})
    elif body.max_new_tokens is not None:
        raise InvalidInputError("max_new_tokens applies only to a causal-LM request without a 'response'")
    query = to_query(body, manifest.task, get_settings(request).max_text_chars)
    result = await explain_on_model(request, explainer, query, options_of(body))
    out = to_response(result, manifest.summary()).model_copy(update={"generated_response": generated})
    if cache.enabled:
        await asyncio.to_thread(cache.set, key, out.model_dump(mode="json"))
    return out


@router.post("/v1/compare", response_model=CompareResponse, responses=ERRORS, tags=["explain"], dependencies=JSON_BODY)
async def compare(body: CompareRequest, request: Request) -> CompareResponse:
    """Compare strategies for one query: the score in dB of each strategy at `k`, and of `strategy` at each k.

    The query is featurised once; every selection is scored against that one gradient, so
    the point for (`strategy`, `k`) equals the `score_db` of `/v1/explain` with the same
    fields. Examples are not returned (ask `/v1/explain` for them).
    """
    explainer = get_explainer(request)
    query = to_query(body, explainer.store.manifest.task, get_settings(request).max_text_chars)
    options = explainer.resolve(options_of(body))
    _, _, points = compare_points(options, body.strategies, body.ks, max_k=explainer.config.max_k, n=explainer.store.n)
    admit(request, explainer, options, points)
    result: Comparison = await in_executor(
        request, lambda: explainer.compare(query, options, strategies=body.strategies, ks=body.ks), heavy=True
    )
    metrics: Metrics = request.app.state.metrics
    metrics.stage.labels("gradient").observe(result.timings_ms["gradient"] / 1e3)
    return to_compare_response(result, explainer.store.manifest.summary())
