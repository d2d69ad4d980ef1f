"""The FastAPI service: one served index, explanations over HTTP; `create_app` and the `exemplar-api` CLI.

Model work runs on one dedicated executor thread (PyTorch autograd on a shared model is
not safe under concurrent requests); FAISS, selection and scoring run there too, so a
request's whole computation happens in one place and the event loop stays free.
The routes are in `app.routes`, what they share in `app.deps`, the middleware in `app.middleware`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from app.batching import MicroBatcher
from app.cache import ExplanationCache
from app.deps import open_explainer, watch_index
from app.errors import install_error_handlers
from app.jobs import JobQueue
from app.middleware import BodySizeLimit, add_request_id
from app.observability import Metrics, configure_logging
from app.probe import probe_ready
from app.routes import admin, docs, explain, health, index, jobs
from app.security import RateLimiter
from app.settings import ApiSettings, missing_keys
from exemplar.errors import ExemplarError
from exemplar.explain import Explainer
from exemplar.options import ExplainOptions
from exemplar.results import Explanation
from exemplar.tasks import Example
from exemplar.threads import PRIORITY, limit_blas_threads, start_heavy_thread

log = logging.getLogger("exemplar.api")


def lifespan_of(
    settings: ApiSettings, explainer: Explainer | None
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """Start-up and shut-down of one app: the model thread, Redis clients, the index, file watch, micro-batcher."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="exemplar-model")
        app.state.executor = executor
        app.state.heavy_executor = ThreadPoolExecutor(  # scheduled below light work by the OS too
            max_workers=1, thread_name_prefix="exemplar-heavy", initializer=start_heavy_thread
        )
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
            app.state.explainer = await asyncio.get_running_loop().run_in_executor(executor, open_explainer, settings)
        app.state.served_since = time.time()
        log.info("serving index %s (%d examples)", app.state.explainer.store.path, app.state.explainer.store.n)
        watcher = None
        if settings.watch_interval_s > 0:
            watcher = asyncio.create_task(watch_index(app))
        app.state.batcher = None
        if settings.batch_max > 1:

            def explain_batch(requests: Sequence[tuple[Example, ExplainOptions]]) -> list[Explanation | ExemplarError]:
                with PRIORITY.light_work():  # the model lane's work goes before the heavy lane's
                    return app.state.explainer.explain_many(requests)

            app.state.batcher = MicroBatcher(
                explain_batch,
                executor,
                settings.batch_max,
                settings.batch_wait_ms,
                on_batch=app.state.metrics.batch_size.observe,
            )
            app.state.batcher.start()
        yield
        if watcher is not None:
            watcher.cancel()
        if app.state.batcher is not None:
            await app.state.batcher.stop()
        app.state.heavy_executor.shutdown(wait=True)
        executor.shutdown(wait=True)

    return lifespan


def create_app(settings: ApiSettings, explainer: Explainer | None = None) -> FastAPI:
    """The app for one index; pass `explainer` to serve an already-open one (tests). Refuses settings
    that require keys and have none (`EXEMPLAR_REQUIRE_KEYS`), however the app is started."""
    if (problem := missing_keys(settings)) is not None:
        raise ExemplarError(problem)
    app = FastAPI(
        title="Exemplar",
        version="0.1.0",
        description="Which training examples explain this output? k examples with simplex weights and the "
        "Selection Relevance Score in dB (Schoenegger & Roth, ACL 2026 Findings).",
        lifespan=lifespan_of(settings, explainer),
        docs_url=None,  # app.routes.docs serves Swagger UI and ReDoc from packaged assets, not a CDN
        redoc_url=None,
    )
    install_error_handlers(app)
    app.state.settings = settings
    app.state.metrics = Metrics()
    app.state.swap_lock = asyncio.Lock()
    app.middleware("http")(add_request_id)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes, max_header_bytes=settings.max_header_bytes)
    for area in (explain, index, jobs, admin, health, docs):
        app.include_router(area.router)
    app.mount("/static", StaticFiles(directory=health.STATIC_DIR), name="static")
    app.mount(docs.ASSETS_URL, StaticFiles(directory=docs.assets_dir()), name="docs-assets")
    return app


def main(argv: list[str] | None = None) -> None:
    """`exemplar-api --index DIR [--model DIR] [--adapter DIR] [--host H] [--port P]`."""
    import uvicorn

    parser = argparse.ArgumentParser(prog="exemplar-api", description="Serve one Exemplar index over HTTP.")
    parser.add_argument("--index", type=Path, help="index directory (default: $EXEMPLAR_INDEX_DIR or the tweets demo)")
    parser.add_argument("--model", type=Path, help="where the index's model is, if it moved (checked by checksum)")
    parser.add_argument("--adapter", type=Path, help="where the index's LoRA adapter is, if it moved")
    parser.add_argument("--device", help="auto | cpu | cuda | cuda:N (default auto: a GPU when torch sees one)")
    parser.add_argument("--dtype", help="the weights' precision; default the index's (another is refused)")
    parser.add_argument("--host", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default 8000)")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument(
        "--check",
        action="store_true",
        help="probe the server on 127.0.0.1:$EXEMPLAR_PORT: exit 0 if /readyz answers 200, else 1 (a container healthcheck)",
    )
    args = parser.parse_args(argv)
    overrides = {
        k: v
        for k, v in {
            "index_dir": args.index,
            "model_dir": args.model,
            "adapter_dir": args.adapter,
            "device": args.device,
            "dtype": args.dtype,
            "host": args.host,
            "port": args.port,
            "torch_threads": args.threads,
        }.items()
        if v is not None
    }
    settings = ApiSettings(**overrides)
    if args.check:  # `exemplar-api --check` is answered by app.cli without importing this module
        sys.exit(probe_ready(settings.port))
    if (problem := missing_keys(settings)) is not None:
        parser.exit(2, f"exemplar-api: error: {problem}\n")
    configure_logging()
    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)
    try:
        explainer = open_explainer(settings)
    except ExemplarError as exc:
        parser.exit(2, f"exemplar-api: error: {exc}\n")
    uvicorn.run(
        create_app(settings, explainer), host=settings.host, port=settings.port, log_level="info", log_config=None
    )
