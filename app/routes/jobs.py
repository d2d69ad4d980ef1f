"""`/v1/jobs`: batch explanations on `exemplar-worker`s through Redis (submit, poll, cancel)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request

from app.deps import JSON_BODY, PROTECTED, get_explainer, get_settings, to_query
from app.jobs import JobQueue
from app.routes import ERRORS
from app.schemas import JobRequest, JobStatus

router = APIRouter()


@router.post(
    "/v1/jobs", response_model=JobStatus, status_code=202, responses=ERRORS, tags=["jobs"], dependencies=JSON_BODY
)
async def submit_job(body: JobRequest, request: Request) -> dict[str, Any]:
    """Explain up to 1000 queries with the same options on a worker; returns the job at once.

    Poll `GET /v1/jobs/{id}` for progress and results (kept `EXEMPLAR_JOB_RESULT_TTL_S`
    seconds, default one day). Needs Redis (`EXEMPLAR_REDIS_URL`) and a running
    `exemplar-worker`; a worker that dies mid-job does not lose it (it is retried).
    """
    settings = get_settings(request)
    explainer = get_explainer(request)
    task = explainer.store.manifest.task
    for i, q in enumerate(body.queries):
        to_query(q, task, settings.max_text_chars, where=f"queries.{i}: ")
    queries = [q.model_dump(exclude_none=True) for q in body.queries]
    jobs: JobQueue = request.app.state.jobs
    index_dir = str(explainer.store.path.resolve())
    owner = request.state.client
    options = body.options.model_dump()
    options["score_space"] = options["score_space"] or get_explainer(request).config.score_space
    return await asyncio.to_thread(jobs.submit, index_dir, queries, options, owner, settings.truncate_queries)


@router.get("/v1/jobs/{job_id}", response_model=JobStatus, responses=ERRORS, tags=["jobs"], dependencies=PROTECTED)
async def job_status(job_id: str, request: Request) -> dict[str, Any]:
    """A batch job's status and progress, with its results once finished."""
    jobs: JobQueue = request.app.state.jobs
    return await asyncio.to_thread(jobs.status, job_id, request.state.client)


@router.delete("/v1/jobs/{job_id}", response_model=JobStatus, responses=ERRORS, tags=["jobs"], dependencies=PROTECTED)
async def cancel_job(job_id: str, request: Request) -> dict[str, Any]:
    """Cancel a queued job or stop a running one (a finished job is returned unchanged)."""
    jobs: JobQueue = request.app.state.jobs
    return await asyncio.to_thread(jobs.cancel, job_id, request.state.client)
