"""The FastAPI service: one served index, explanations over HTTP.

Model work runs on one dedicated executor thread (PyTorch autograd on a shared model is
not safe under concurrent requests); FAISS, selection and scoring run there too, so a
request's whole computation happens in one place and the event loop stays free.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import logging
import math
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request, Response
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.batching import MicroBatcher
from app.cache import ExplanationCache, index_version, request_key
from app.errors import error_response, install_error_handlers
from app.jobs import JobQueue
from app.observability import REQUEST_ID, Metrics, configure_logging
from app.schemas import (
    ComparePointOut,
    CompareRequest,
    CompareResponse,
    ErrorBody,
    ExampleOut,
    ExplainRequest,
    ExplainResponse,
    Health,
    IndexInfo,
    JobRequest,
    JobStatus,
    OptionFields,
    QueryFields,
)
from app.security import RateLimiter, authenticate
from app.settings import ApiSettings, explain_config
from exemplar.errors import AuthenticationError, ExemplarError, InvalidInputError
from exemplar.explain import SCORE_SPACES, STRATEGIES, ComparePoint, Comparison, Explainer, ExplainOptions, Explanation
from exemplar.relevance import SOLVERS
from exemplar.selection import ORDERINGS
from exemplar.store import StoredExample, read_manifest, resolve_index
from exemplar.tasks import Example
from exemplar.threads import limit_blas_threads

log = logging.getLogger("exemplar.api")
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 404, 409, 413, 422, 429, 500, 503)
}
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
STATIC_DIR = Path(__file__).resolve().parent / "static"
PAGE_HEADERS = {
    # everything the page loads comes from this server; no inline script, no third party
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class BodySizeLimit:
    """Pure ASGI middleware: refuse request bodies over `max_bytes` with 413, streamed or not."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(scope, receive, send)
            return
        # Read the whole body first (bounded by max_bytes), then replay it to the app.
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            seen += len(chunks[-1])
            if seen > self.max_bytes:
                await self._reject(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        request.state.request_id = scope.get("state", {}).get("request_id", uuid.uuid4().hex)
        response = error_response(
            request,
            413,
            "payload_too_large",
            f"request body is larger than {self.max_bytes} bytes; send a shorter query",
        )
        await response(scope, receive, send)


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


def create_app(settings: ApiSettings, explainer: Explainer | None = None) -> FastAPI:
    """The app for one index; pass `explainer` to serve an already-open one (tests)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="exemplar-model")
        app.state.executor = executor
        limit_blas_threads(settings.blas_threads)
        if settings.torch_threads:
            import torch

            await asyncio.get_running_loop().run_in_executor(executor, torch.set_num_threads, settings.torch_threads)
        app.state.cache = ExplanationCache(settings.redis_url, settings.cache_ttl_s)
        app.state.jobs = JobQueue(
            settings.redis_url,
            settings.queue,
            settings.job_result_ttl_s,
            settings.job_retries,
            max_active_per_owner=settings.max_jobs_per_key,
            check_owner=bool(settings.api_keys),
        )
        # per key: without API keys there are no clients to tell apart, so no limit
        app.state.limiter = RateLimiter(
            settings.redis_url if settings.api_keys else None, settings.rate_limit_per_minute
        )
        app.state.explainer = explainer
        if app.state.explainer is None:
            config = explain_config(settings)
            app.state.explainer = await asyncio.get_running_loop().run_in_executor(
                executor, lambda: Explainer.from_index(settings.index_dir, config, batch_size=settings.batch_size)
            )
        app.state.served_since = time.time()
        log.info("serving index %s (%d examples)", app.state.explainer.store.path, app.state.explainer.store.n)
        watcher = None
        if settings.watch_interval_s > 0:
            watcher = asyncio.create_task(watch_index(app))
        app.state.batcher = None
        if settings.batch_max > 1:
            app.state.batcher = MicroBatcher(
                lambda requests: app.state.explainer.explain_many(requests),
                executor,
                settings.batch_max,
                settings.batch_wait_ms,
                on_batch=metrics.batch_size.observe,
            )
            app.state.batcher.start()
        yield
        if watcher is not None:
            watcher.cancel()
        if app.state.batcher is not None:
            await app.state.batcher.stop()
        executor.shutdown(wait=True)

    app = FastAPI(
        title="Exemplar",
        version="0.1.0",
        description="Which training examples explain this output? k examples with simplex weights and the "
        "Selection Relevance Score in dB (Schoenegger & Roth, ACL 2026 Findings).",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    metrics = Metrics()
    app.state.metrics = metrics

    @app.middleware("http")
    async def add_request_id(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        given = request.headers.get("x-request-id", "")
        request.state.request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        token = REQUEST_ID.set(request.state.request_id)
        started = time.perf_counter()
        try:
            response = await call_next(request)
            response.headers["X-Request-ID"] = request.state.request_id
            route = getattr(request.scope.get("route"), "path", "unmatched")
            seconds = time.perf_counter() - started
            metrics.requests.labels(request.method, route, str(response.status_code)).inc()
            metrics.latency.labels(route).observe(seconds)
            log.info(
                "request",
                extra={
                    "request_id": request.state.request_id,
                    "method": request.method,
                    "route": route,
                    "status": response.status_code,
                    "ms": round(seconds * 1e3, 3),
                },
            )
            return response
        finally:
            REQUEST_ID.reset(token)

    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)

    async def guard(request: Request) -> str:
        """API key (when configured) and the key's rate limit; the key's name is the client."""
        name = authenticate(request.headers, settings.api_keys)
        request.state.client = name
        await asyncio.to_thread(request.app.state.limiter.check, name)
        return name

    protected = [Depends(guard)]

    def get_explainer(request: Request) -> Explainer:
        explainer: Explainer = request.app.state.explainer
        return explainer

    swap_lock = asyncio.Lock()

    async def swap_index(app: FastAPI, why: str) -> tuple[Explainer, Explainer]:
        """Open the version `settings.index_dir` stands for now and serve it; returns (previous, fresh).

        It is opened on the model thread, between requests: requests already running finish
        on the old version, later ones (and queued micro-batches) get the new one, none
        fails. If it cannot be opened, the exception propagates and the old one stays.
        """
        async with swap_lock:
            previous: Explainer = app.state.explainer
            config = explain_config(settings)
            fresh = await asyncio.get_running_loop().run_in_executor(
                app.state.executor,
                lambda: Explainer.from_index(settings.index_dir, config, batch_size=settings.batch_size),
            )
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
            return previous, fresh

    def index_changed(served: Explainer) -> bool:
        """Whether the index directory now stands for another version than the one served."""
        path = resolve_index(settings.index_dir)
        if path.resolve() != served.store.path.resolve():
            return True
        return read_manifest(path).created_at != served.store.manifest.created_at

    async def watch_index(app: FastAPI) -> None:
        """Poll the index directory every `watch_interval_s` and swap in a new version."""
        while True:
            await asyncio.sleep(settings.watch_interval_s)
            try:
                if await asyncio.to_thread(index_changed, app.state.explainer):
                    await swap_index(app, "file watch")
            except ExemplarError as exc:  # a half-written or broken version: keep serving, try again later
                log.warning("file watch: not swapping to %s: %s", settings.index_dir, exc)

    async def in_executor(request: Request, fn: Callable[[], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(request.app.state.executor, fn)

    def to_query(body: QueryFields, task: str, where: str = "") -> Example:
        """The query as an Example, checked against the served index's task and the length limit."""
        for name in ("text", "prompt", "response"):
            value = getattr(body, name)
            if value is not None and len(value) > settings.max_text_chars:
                raise InvalidInputError(f"{where}{name}: longer than {settings.max_text_chars} characters; shorten it")
        if task == "classification":
            if body.text is None:
                raise InvalidInputError(
                    f"{where}this index serves a classifier: send 'text' (and optionally 'label'), not prompt/response"
                )
            return Example(text=body.text, label=body.label)
        if body.prompt is None:
            raise InvalidInputError(
                f"{where}this index serves a causal LM: send 'prompt' and 'response', not text/label"
            )
        return Example(prompt=body.prompt, response=body.response)

    @app.post("/v1/explain", response_model=ExplainResponse, responses=ERRORS, tags=["explain"], dependencies=protected)
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
        key = request_key(index_version(manifest), body.model_dump(mode="json"))
        if cache.enabled:
            cached = await asyncio.to_thread(cache.get, key)
            metrics.cache.labels("miss" if cached is None else "hit").inc()
            if cached is not None:
                return JSONResponse(cached, headers={"X-Cache": "hit"})
        response.headers["X-Cache"] = "miss" if cache.enabled else "off"
        query = to_query(body, manifest.task)
        options = options_of(body)
        batcher: MicroBatcher | None = request.app.state.batcher
        if batcher is not None:
            result = await batcher.submit(query, options)
        else:
            result = await in_executor(request, lambda: explainer.explain(query, options))
            metrics.batch_size.observe(1)
        for stage, ms in result.timings_ms.items():
            metrics.stage.labels(stage).observe(ms / 1e3)
        out = to_response(result, manifest.summary())
        if cache.enabled:
            await asyncio.to_thread(cache.set, key, out.model_dump(mode="json"))
        return out

    @app.post("/v1/compare", response_model=CompareResponse, responses=ERRORS, tags=["explain"], dependencies=protected)
    async def compare(body: CompareRequest, request: Request) -> CompareResponse:
        """Compare strategies for one query: the score in dB of each strategy at `k`, and of `strategy` at each k.

        The query is featurised once; every selection is scored against that one gradient, so
        the point for (`strategy`, `k`) equals the `score_db` of `/v1/explain` with the same
        fields. Examples are not returned (ask `/v1/explain` for them).
        """
        explainer = get_explainer(request)
        query = to_query(body, explainer.store.manifest.task)
        options = options_of(body)
        result: Comparison = await in_executor(
            request, lambda: explainer.compare(query, options, strategies=body.strategies, ks=body.ks)
        )
        metrics.stage.labels("gradient").observe(result.timings_ms["gradient"] / 1e3)
        return to_compare_response(result, explainer.store.manifest.summary())

    @app.get(
        "/v1/examples/{example_id:path}",
        response_model=ExampleOut,
        responses=ERRORS,
        tags=["examples"],
        dependencies=protected,
    )
    async def get_example(example_id: str, request: Request) -> ExampleOut:
        """One training example of the served index, by id."""
        explainer = get_explainer(request)
        return to_example_out(await in_executor(request, lambda: explainer.store.example_by_id(example_id)))

    def describe(explainer: Explainer) -> dict[str, Any]:
        store = explainer.store
        return {**store.manifest.summary(), "version": store.path.name, "path": str(store.path)}

    @app.get("/v1/index", response_model=IndexInfo, responses=ERRORS, tags=["index"], dependencies=protected)
    async def describe_index(request: Request) -> IndexInfo:
        """The served index version (manifest summary, search index type and presets, version directory, when
        it started being served) and the estimators, strategies and limits a request may use."""
        explainer = get_explainer(request)
        return IndexInfo(
            **describe(explainer),
            served_since=request.app.state.served_since,
            estimators=explainer.store.estimator_names(),
            strategies=list(STRATEGIES),
            orderings=list(ORDERINGS),
            solvers=list(SOLVERS),
            score_spaces=list(SCORE_SPACES),
            score_space=explainer.config.score_space,
            max_k=explainer.config.max_k,
            pool_size=explainer.config.pool_size,
        )

    @app.post(
        "/v1/jobs", response_model=JobStatus, status_code=202, responses=ERRORS, tags=["jobs"], dependencies=protected
    )
    async def submit_job(body: JobRequest, request: Request) -> dict[str, Any]:
        """Explain up to 1000 queries with the same options on a worker; returns the job at once.

        Poll `GET /v1/jobs/{id}` for progress and results (kept `EXEMPLAR_JOB_RESULT_TTL_S`
        seconds, default one day). Needs Redis (`EXEMPLAR_REDIS_URL`) and a running
        `exemplar-worker`; a worker that dies mid-job does not lose it (it is retried).
        """
        explainer = get_explainer(request)
        task = explainer.store.manifest.task
        for i, q in enumerate(body.queries):
            to_query(q, task, where=f"queries.{i}: ")
        queries = [q.model_dump(exclude_none=True) for q in body.queries]
        jobs: JobQueue = request.app.state.jobs
        index_dir = str(explainer.store.path.resolve())
        owner = request.state.client
        options = body.options.model_dump()
        options["score_space"] = options["score_space"] or get_explainer(request).config.score_space
        return await asyncio.to_thread(jobs.submit, index_dir, queries, options, owner, settings.truncate_queries)

    @app.get("/v1/jobs/{job_id}", response_model=JobStatus, responses=ERRORS, tags=["jobs"], dependencies=protected)
    async def job_status(job_id: str, request: Request) -> dict[str, Any]:
        """A batch job's status and progress, with its results once finished."""
        jobs: JobQueue = request.app.state.jobs
        return await asyncio.to_thread(jobs.status, job_id, request.state.client)

    @app.delete("/v1/jobs/{job_id}", response_model=JobStatus, responses=ERRORS, tags=["jobs"], dependencies=protected)
    async def cancel_job(job_id: str, request: Request) -> dict[str, Any]:
        """Cancel a queued job or stop a running one (a finished job is returned unchanged)."""
        jobs: JobQueue = request.app.state.jobs
        return await asyncio.to_thread(jobs.cancel, job_id, request.state.client)

    @app.post("/v1/admin/reload", responses=ERRORS, tags=["admin"])
    async def reload_index(request: Request) -> dict[str, Any]:
        """Serve the index directory's current version (e.g. after `index-builder append`), without a restart.

        The new version is opened on the model thread, between requests; requests already
        running finish on the old one. If it cannot be opened, the old one stays served.
        """
        if settings.admin_key_sha256 is not None:
            given = request.headers.get("x-admin-key", "")
            digest = hashlib.sha256(given.encode()).hexdigest()
            if not hmac.compare_digest(digest, settings.admin_key_sha256.lower()):
                raise AuthenticationError("reloading needs the admin key in the X-Admin-Key header")
        previous, fresh = await swap_index(request.app, "admin reload")
        return {"previous": describe(previous), "index": describe(fresh)}

    @app.get("/metrics", tags=["health"], response_class=PlainTextResponse)
    async def prometheus_metrics(request: Request) -> Response:
        """Prometheus metrics: requests by route and status, latencies per route and stage, cache, job queue."""
        cache: ExplanationCache = request.app.state.cache
        metrics.cache_up.set(1 if cache.state == "ok" else 0)
        jobs: JobQueue = request.app.state.jobs
        depth = await asyncio.to_thread(jobs.depth)
        if depth is not None:
            metrics.queue_depth.set(depth)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    async def web_page() -> FileResponse:
        """The web page to explore explanations (plain HTML/JS/CSS from app/static, no CDN)."""
        return FileResponse(STATIC_DIR / "index.html", headers=PAGE_HEADERS)

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/healthz", response_model=Health, tags=["health"])
    async def healthz() -> Health:
        """Liveness: the process answers."""
        return Health(status="ok")

    @app.get("/readyz", response_model=Health, responses={503: {"model": Health}}, tags=["health"])
    async def readyz(request: Request) -> Health:
        """Readiness: the index and model are loaded."""
        explainer = getattr(request.app.state, "explainer", None)
        if explainer is None:
            return Health(status="loading")
        cache: ExplanationCache = request.app.state.cache
        return Health(
            status="ready",
            details={
                "index": str(explainer.store.path),
                "n_examples": explainer.store.n,
                "cache": await asyncio.to_thread(cache.check),  # "off", "ok" or "down: ..." (never unready)
            },
        )

    return app


def main(argv: list[str] | None = None) -> None:
    """`exemplar-api --index DIR [--host H] [--port P]`."""
    import uvicorn

    parser = argparse.ArgumentParser(prog="exemplar-api", description="Serve one Exemplar index over HTTP.")
    parser.add_argument("--index", type=Path, help="index directory (default: $EXEMPLAR_INDEX_DIR or the tweets demo)")
    parser.add_argument("--host", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default 8000)")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    args = parser.parse_args(argv)
    overrides = {
        k: v
        for k, v in {
            "index_dir": args.index,
            "host": args.host,
            "port": args.port,
            "torch_threads": args.threads,
        }.items()
        if v is not None
    }
    settings = ApiSettings(**overrides)
    configure_logging()
    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)
    try:
        config = explain_config(settings)
        explainer = Explainer.from_index(settings.index_dir, config, batch_size=settings.batch_size)
    except ExemplarError as exc:
        parser.exit(2, f"exemplar-api: error: {exc}\n")
    uvicorn.run(
        create_app(settings, explainer), host=settings.host, port=settings.port, log_level="info", log_config=None
    )
