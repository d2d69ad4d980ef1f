"""Jobs the worker runs. Arguments and results are JSON-compatible (RQ's JSONSerializer).

The API and the index builder enqueue them by import path: `worker.keys.EXPLAIN_BATCH_JOB` and
`worker.keys.BUILD_SHARD_JOB` name `explain_batch` and `build_shard` here.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from exemplar.errors import ExemplarError, InvalidInputError
from exemplar.explain import Explainer
from exemplar.options import ExplainOptions
from exemplar.tasks import Example
from worker.keys import cancel_key

log = logging.getLogger("exemplar.worker")

_explainers: dict[str, tuple[int, Explainer]] = {}
MAX_OPEN_INDEXES = 2
"""Indexes a worker process keeps open (the most recently used); each holds a model."""
MODEL_AT: dict[str, str | None] = {}
"""`model_dir`/`adapter_dir`/`device` of `exemplar-worker --model/--adapter/--device`: where the indexes'
model is when not where their manifests say (checked by checksum), and where it runs. Set once at
start-up, before RQ forks."""


def load_explainer(index_dir: str) -> Explainer:
    """Open an index once per worker process, and again when a new version replaced it (append,
    rebuild: the new version shares the old one's model when built from the same one). At most
    `MAX_OPEN_INDEXES` stay open; the least recently used is dropped."""
    from exemplar.store import MANIFEST

    try:
        version = (Path(index_dir) / MANIFEST).stat().st_mtime_ns
    except OSError:
        version = -1  # let from_index report what is wrong
    cached = _explainers.pop(index_dir, None)
    if cached is None or cached[0] != version:
        previous = cached[1] if cached is not None else None
        opened = Explainer.from_index(
            index_dir,
            previous=previous,
            model_dir=MODEL_AT.get("model_dir"),
            adapter_dir=MODEL_AT.get("adapter_dir"),
            device=MODEL_AT.get("device") or "auto",
        )
        cached = (version, opened)
    _explainers[index_dir] = cached  # most recently used last
    while len(_explainers) > MAX_OPEN_INDEXES:
        del _explainers[next(iter(_explainers))]
    return cached[1]


def explain_batch(
    index_dir: str,
    queries: list[dict[str, Any]],
    options: dict[str, Any] | None = None,
    truncate_queries: bool = True,
) -> list[dict[str, Any]]:
    """Explain each query; a bad query yields an error entry instead of failing the batch.

    With `truncate_queries` off (the API's default), a query longer than the index's
    max_length tokens gets an error entry instead of being cut.
    """
    explainer = load_explainer(index_dir)
    try:
        explain_options = ExplainOptions(**(options or {}))
    except TypeError as exc:
        raise InvalidInputError(f"unknown explanation option: {exc}") from exc
    classifier = explainer.store.manifest.task == "classification"
    fields = ("text", "text_pair", "label") if classifier else ("prompt", "response", "messages")
    results: list[dict[str, Any]] = []
    job = _current_job()
    for i, query in enumerate(queries):
        if job is not None:  # progress for GET /v1/jobs/{id}, and the cancel check
            if _cancelled(job):
                job.meta.update(done=i, total=len(queries), canceled=True)
                _save_meta(job)
                log.info("job %s cancelled after %d of %d queries", job.id, i, len(queries))
                return results
            job.meta.update(done=i, total=len(queries))
            _save_meta(job)
        try:
            if not isinstance(query, dict) or set(query) - set(fields):
                raise InvalidInputError(f"query {i}: expected an object with fields {', '.join(fields)}")
            if fields[0] == "text":
                example = Example(text=query.get("text"), label=query.get("label"), text_pair=query.get("text_pair"))
            else:
                example = Example(
                    prompt=query.get("prompt"), response=query.get("response"), messages=query.get("messages")
                )
            explainer.check_query(example, truncate=truncate_queries)
            results.append(explainer.explain(example, explain_options).to_dict(explainer.store.manifest.summary()))
        except ExemplarError as exc:
            results.append({"error": str(exc), "error_type": type(exc).__name__})
    return results


def _cancelled(job: Any) -> bool:
    """Whether `DELETE /v1/jobs/{id}` asked this job to stop (`worker.keys.cancel_key`); with Redis
    unreachable, no (the job goes on, and a cancel sent meanwhile is seen at a later query)."""
    from redis.exceptions import RedisError

    try:
        return bool(job.connection.exists(cancel_key(job.id)))
    except RedisError as exc:
        log.warning("job %s: cannot check for a cancel (%s); going on", job.id, exc)
        return False


def _save_meta(job: Any) -> None:
    """Progress is best effort: a Redis outage must not fail the job (its result is saved at the end)."""
    from redis.exceptions import RedisError

    try:
        job.save_meta()
    except RedisError as exc:
        log.warning("job %s: cannot save progress (%s); going on", job.id, exc)


def _current_job() -> Any:
    """The RQ job being run, or None when called directly."""
    from rq import get_current_job

    return get_current_job()


def build_shard(spec: dict[str, Any], task: dict[str, Any]) -> dict[str, Any]:
    """Compute one shard of a distributed index build (`index-builder build --distributed`)."""
    from exemplar.build import ShardTask, run_shard

    started = time.perf_counter()
    computed = run_shard(spec, ShardTask(**task))
    return {"shard": task["name"], "computed": computed, "seconds": round(time.perf_counter() - started, 3)}
