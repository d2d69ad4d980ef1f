"""What the routes share: the app's settings and served explainer, the auth guard, the model thread, queries.

Per-app state lives on `app.state` (several apps may share one process, as in the tests):
`settings`, `metrics`, `swap_lock` from `create_app`; `executor` (the model lane), `heavy_executor`
(the heavy lane, `in_executor`), `explainer`, `cache`, `jobs`,
`limiter`, `batcher`, `served_since` from its lifespan. Index hot-swap (`swap_index`, used by
`POST /v1/admin/reload` and the file watch) is here too: both open the new version on the
model thread and swap the reference, so in-flight requests finish on the old one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from app.batching import MicroBatcher
from app.observability import Metrics
from app.schemas import QueryFields
from app.security import authenticate
from app.serialise import describe
from app.settings import ApiSettings, explain_config
from exemplar.cost import Cost
from exemplar.errors import ExemplarError, InvalidInputError
from exemplar.explain import Explainer
from exemplar.memory import release_memory
from exemplar.options import ExplainOptions
from exemplar.results import Explanation
from exemplar.store import read_manifest, resolve_index
from exemplar.tasks import Example
from exemplar.threads import PRIORITY

log = logging.getLogger("exemplar.api")


def get_settings(request: Request) -> ApiSettings:
    settings: ApiSettings = request.app.state.settings
    return settings


def get_explainer(request: Request) -> Explainer:
    explainer: Explainer = request.app.state.explainer
    return explainer


# Declared so the OpenAPI document has securitySchemes (Swagger UI's Authorize button, generated
# clients); neither rejects anything itself (auto_error=False): `authenticate` does, by the settings.
BEARER = HTTPBearer(
    scheme_name="bearer", auto_error=False, description="Authorization: Bearer <API key> (when the server has keys)"
)
API_KEY = APIKeyHeader(
    name="X-API-Key", scheme_name="apiKey", auto_error=False, description="the API key (when the server has keys)"
)
ADMIN_KEY = APIKeyHeader(
    name="X-Admin-Key", scheme_name="adminKey", auto_error=False, description="the admin key (POST /v1/admin/reload)"
)


async def guard(
    request: Request,
    _bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)] = None,
    _key: Annotated[str | None, Depends(API_KEY)] = None,
) -> str:
    """API key (when configured) and the key's rate limit; the key's name is the client."""
    name = authenticate(request.headers, get_settings(request).api_keys)
    request.state.client = name
    await asyncio.to_thread(request.app.state.limiter.check, name)
    return name


PROTECTED = [Depends(guard)]


async def require_json(request: Request) -> None:
    """415 unless the body is declared JSON (`application/json` or a `+json` type), so a body sent
    as text or form data is named as such instead of failing field validation."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        got = f"Content-Type {media_type!r}" if media_type else "no Content-Type"
        raise HTTPException(415, f"send the body as JSON with Content-Type: application/json (got {got})")


JSON_BODY = [*PROTECTED, Depends(require_json)]
"""Dependencies of the routes that take a JSON body: the API key first, then the content type."""


async def in_executor(request: Request, fn: Callable[[], Any], *, heavy: bool = False) -> Any:
    """Run `fn` on the app's model lane, or with `heavy` on the heavy lane: a second thread whose
    requests (compare, large pools, re-ranking) take the model only in short turns of its fair
    lock, so light requests on the model lane are not starved behind them."""
    lane = heavy and get_settings(request).heavy_lane
    executor = request.app.state.heavy_executor if lane else request.app.state.executor
    timeout_s = get_settings(request).request_timeout_s or None
    run = with_priority(fn, heavy=lane, timeout_s=timeout_s)
    return await asyncio.get_running_loop().run_in_executor(executor, run)


def with_priority(fn: Callable[[], Any], *, heavy: bool, timeout_s: float | None = None) -> Callable[[], Any]:
    """`fn` marked as heavy work (it waits at its checkpoints while light work runs, and stops at one
    past `timeout_s` seconds) or light work (`exemplar.threads.Priority`)."""

    def run() -> Any:
        if not heavy:
            with PRIORITY.light_work():
                return fn()
        try:
            with PRIORITY.heavy_work(timeout_s):
                return fn()
        finally:  # a heavy request's large transient arrays (pools, pairwise matrices) go back to the OS
            release_memory(collect=False)

    return run


def admit(
    request: Request, explainer: Explainer, options: ExplainOptions, points: list[tuple[str, int]] | None = None
) -> Cost:
    """The request's estimated cost (`Explainer.cost`), refused (`CostLimitError`, 413) above the
    server's limit: `max_request_cost_s`, by default the request deadline."""
    settings = get_settings(request)
    limit = settings.max_request_cost_s if settings.max_request_cost_s is not None else settings.request_timeout_s
    explainer.check_options(explainer.resolve(options))  # a bad option is named before any estimate
    cost = explainer.cost(options, points)
    cost.check(limit)
    request.state.cost = cost
    return cost


async def explain_on_model(
    request: Request, explainer: Explainer, query: Example, options: ExplainOptions
) -> Explanation:
    """One explanation, refused up front when its estimated cost is above the limit (`admit`): a
    heavy one (estimated above `exemplar.cost.HEAVY_COST_S`, or `ExplainOptions.heavy`) on the heavy
    lane, else on the model thread, through the micro-batcher when there is one."""
    metrics: Metrics = request.app.state.metrics
    batcher: MicroBatcher | None = request.app.state.batcher
    cost = admit(request, explainer, options)
    result: Explanation
    if (cost.heavy or options.heavy(explainer.config)) and get_settings(request).heavy_lane:
        result = await in_executor(request, lambda: explainer.explain(query, options), heavy=True)
        metrics.batch_size.observe(1)
    elif batcher is not None:
        result = await batcher.submit(query, options)
    else:
        result = await in_executor(request, lambda: explainer.explain(query, options))
        metrics.batch_size.observe(1)
    for stage, ms in result.timings_ms.items():
        metrics.stage.labels(stage).observe(ms / 1e3)
    return result


def to_query(body: QueryFields, task: str, max_text_chars: int, where: str = "") -> Example:
    """The query as an Example, checked against the served index's task and the length limit."""
    for name in ("text", "text_pair", "prompt", "response"):
        value = getattr(body, name)
        if value is not None and len(value) > max_text_chars:
            raise InvalidInputError(f"{where}{name}: longer than {max_text_chars} characters; shorten it")
    if task == "classification":
        if body.text is None:
            raise InvalidInputError(
                f"{where}this index serves a classifier: send 'text' (and optionally 'label'), not prompt/response"
            )
        return Example(text=body.text, label=body.label, text_pair=body.text_pair)
    if body.messages is not None:
        for i, turn in enumerate(body.messages):
            if len(turn.content) > max_text_chars:
                raise InvalidInputError(f"{where}messages.{i}.content: longer than {max_text_chars} characters")
        if body.messages[-1].role != "assistant":
            raise InvalidInputError(
                f"{where}the last of 'messages' must be the assistant's turn: it is the response explained (only "
                "POST /v1/explain has the model answer a conversation that ends with the user's turn)"
            )
        return Example(messages=[turn.model_dump() for turn in body.messages])
    if body.prompt is None:
        raise InvalidInputError(
            f"{where}this index serves a causal LM: send 'prompt' and 'response' (or 'messages'), not text/label"
        )
    if body.response is None:
        raise InvalidInputError(
            f"{where}send a 'response' to explain with the prompt (only POST /v1/explain generates one when it is left out)"
        )
    return Example(prompt=body.prompt, response=body.response)


def open_explainer(settings: ApiSettings, previous: Explainer | None = None) -> Explainer:
    """Open the index version `settings.index_dir` stands for now (blocking: run it on the model thread);
    a version over the same model as `previous` shares its loaded model (`Explainer.from_index`)."""
    config = explain_config(settings)
    return Explainer.from_index(
        settings.index_dir,
        config,
        batch_size=settings.batch_size,
        previous=previous,
        model_dir=settings.model_dir,
        adapter_dir=settings.adapter_dir,
        device=settings.device,
        dtype=settings.dtype,
    )


async def swap_index(app: FastAPI, why: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Open the version `settings.index_dir` stands for now and serve it; returns the previous and
    the fresh version's descriptions (`app.serialise.describe`).

    It is opened on the model thread, between requests: requests already running finish
    on the old version, later ones (and queued micro-batches) get the new one, none
    fails. If it cannot be opened, the exception propagates and the old one stays. A version
    over the same model shares the loaded model; the old version's store and caches are freed
    once the last request on it finishes, and the memory is given back to the OS
    (`exemplar.memory.release_memory`).
    """
    settings: ApiSettings = app.state.settings
    metrics: Metrics = app.state.metrics
    async with app.state.swap_lock:
        previous: Explainer = app.state.explainer
        loop = asyncio.get_running_loop()
        fresh = await loop.run_in_executor(app.state.executor, open_explainer, settings, previous)
        app.state.explainer = fresh
        app.state.served_since = time.time()
        metrics.reloads.labels(why).inc()
        log.info(
            "%s: now serving %s (%d examples; was %s, %d)",
            why,
            fresh.store.path,
            fresh.store.n,
            previous.store.path,
            previous.store.n,
        )
        described = describe(previous), describe(fresh)
    del previous, fresh
    await asyncio.to_thread(release_memory)
    return described


def index_changed(index_dir: Path, served: Explainer) -> bool:
    """Whether the index directory now stands for another version than the one served."""
    path = resolve_index(index_dir)
    if path.resolve() != served.store.path.resolve():
        return True
    return read_manifest(path).created_at != served.store.manifest.created_at


async def watch_index(app: FastAPI) -> None:
    """Poll the index directory every `watch_interval_s` and swap in a new version."""
    settings: ApiSettings = app.state.settings
    while True:
        await asyncio.sleep(settings.watch_interval_s)
        try:
            if await asyncio.to_thread(index_changed, settings.index_dir, app.state.explainer):
                await swap_index(app, "file watch")
        except ExemplarError as exc:  # a half-written or broken version: keep serving, try again later
            log.warning("file watch: not swapping to %s: %s", settings.index_dir, exc)
