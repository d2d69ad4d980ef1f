"""`/metrics` (Prometheus), the web page at `/` (its files under `/static`), `/healthz` and `/readyz`."""

from __future__ import annotations

import asyncio
from pathlib import Path

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.cache import ExplanationCache
from app.jobs import JobQueue
from app.observability import Metrics
from app.schemas import Health

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
PAGE_HEADERS = {
    # everything the page loads comes from this server; no inline script, no third party
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

router = APIRouter()


@router.get("/metrics", tags=["health"], response_class=PlainTextResponse)
async def prometheus_metrics(request: Request) -> Response:
    """Prometheus metrics: requests by route and status, latencies per route and stage, cache, job queue."""
    metrics: Metrics = request.app.state.metrics
    cache: ExplanationCache = request.app.state.cache
    metrics.cache_up.set(1 if cache.state == "ok" else 0)
    jobs: JobQueue = request.app.state.jobs
    depth = await asyncio.to_thread(jobs.depth)
    if depth is not None:
        metrics.queue_depth.set(depth)
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/", include_in_schema=False)
async def web_page() -> FileResponse:
    """The web page to explore explanations (plain HTML/JS/CSS from app/static, no CDN)."""
    return FileResponse(STATIC_DIR / "index.html", headers=PAGE_HEADERS)


@router.get("/healthz", response_model=Health, tags=["health"])
async def healthz() -> Health:
    """Liveness: the process answers."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}}, tags=["health"])
async def readyz(request: Request, response: Response) -> Health:
    """Readiness: 200 once the index and model are loaded, 503 (status "loading") before, so an
    orchestrator sends no traffic to a replica that cannot answer yet."""
    explainer = getattr(request.app.state, "explainer", None)
    if explainer is None:
        response.status_code = 503
        response.headers["Retry-After"] = "5"
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
