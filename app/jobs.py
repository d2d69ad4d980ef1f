"""Batch jobs over RQ (JSON payloads): submit, poll with progress, cancel. Run by `exemplar-worker`.

A job is `worker.jobs.explain_batch(index_dir, queries, options)` with `Retry(max=retries)`:
a worker killed mid-job stops heartbeating, and RQ's started-job registry cleanup (run by
workers' maintenance and on every status poll here) puts the job back on the queue, so an
accepted job is never lost. Results (and failures) are kept `result_ttl_s` seconds.
"""

from __future__ import annotations

import re
from typing import Any

from exemplar.errors import NotFoundError, RateLimitedError, UnavailableError, quoted
from worker.keys import EXPLAIN_BATCH_JOB, active_jobs_key, cancel_key

_JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")  # what RQ accepts as a job id


class JobQueue:
    """The API's side of batch jobs; every method is blocking (run it in a thread)."""

    def __init__(
        self,
        redis_url: str | None,
        queue: str,
        result_ttl_s: int,
        retries: int = 2,
        max_active_per_owner: int = 4,
        check_owner: bool = False,
    ) -> None:
        self.redis_url = redis_url
        self.queue_name = queue
        self.result_ttl_s = result_ttl_s
        self.retries = retries
        self.max_active_per_owner = max_active_per_owner
        self.check_owner = check_owner  # with API keys, a key sees only its own jobs
        self._connection: Any = None  # one client (and connection pool) for every request

    def _queue(self) -> Any:
        from redis import Redis
        from redis.exceptions import RedisError
        from rq import Queue
        from rq.serializers import JSONSerializer

        if not self.redis_url:
            raise UnavailableError("batch jobs need Redis: set EXEMPLAR_REDIS_URL and run exemplar-worker")
        if self._connection is None:
            self._connection = Redis.from_url(self.redis_url, socket_connect_timeout=2, socket_timeout=5)
        try:
            self._connection.ping()
        except RedisError as exc:
            raise UnavailableError(
                f"Redis for batch jobs is unreachable ({type(exc).__name__}); try again later"
            ) from exc
        return Queue(self.queue_name, connection=self._connection, serializer=JSONSerializer)

    def submit(
        self,
        index_dir: str,
        queries: list[dict[str, Any]],
        options: dict[str, Any],
        owner: str = "anonymous",
        truncate_queries: bool = False,
    ) -> dict[str, Any]:
        from rq import Retry
        from rq.job import JobStatus

        queue = self._queue()
        active_key = active_jobs_key(owner)
        members = [m.decode() for m in queue.connection.smembers(active_key)]
        for job_id in members:
            old = queue.fetch_job(job_id)
            status = old.get_status() if old is not None else None
            if status not in (JobStatus.QUEUED, JobStatus.STARTED, JobStatus.SCHEDULED, JobStatus.DEFERRED):
                queue.connection.srem(active_key, job_id)
        if queue.connection.scard(active_key) >= self.max_active_per_owner:
            raise RateLimitedError(
                f"{self.max_active_per_owner} batch jobs of this client are queued or running; "
                "wait for one to finish or cancel one",
                retry_after=10,
            )
        job = queue.enqueue(
            EXPLAIN_BATCH_JOB,
            index_dir,
            queries,
            options,
            truncate_queries,
            retry=Retry(max=self.retries) if self.retries > 0 else None,
            result_ttl=self.result_ttl_s,
            failure_ttl=self.result_ttl_s,
            ttl=self.result_ttl_s,  # longest wait in the queue
            meta={"done": 0, "total": len(queries), "owner": owner},
            description=f"explain {len(queries)} queries",
        )
        queue.connection.sadd(active_key, job.id)
        queue.connection.expire(active_key, self.result_ttl_s)
        return self._describe(job)

    def depth(self) -> int | None:
        """Jobs waiting in the queue; None without Redis (metrics must not fail)."""
        try:
            return int(self._queue().count)
        except UnavailableError:
            return None

    def _fetch(self, job_id: str, owner: str) -> Any:
        if not _JOB_ID.fullmatch(job_id):
            raise NotFoundError(f"no job {quoted(job_id)}: job ids are the 'id' POST /v1/jobs returned")
        queue = self._queue()
        queue.started_job_registry.cleanup()  # re-enqueue jobs whose worker died (heartbeat expired)
        job = queue.fetch_job(job_id)
        if job is not None and self.check_owner and (job.meta or {}).get("owner") != owner:
            job = None  # another key's job: do not reveal that it exists
        if job is None:
            raise NotFoundError(
                f"no job {quoted(job_id)} (unknown, or its results expired after {self.result_ttl_s} s)"
            )
        return job

    def status(self, job_id: str, owner: str = "anonymous") -> dict[str, Any]:
        return self._describe(self._fetch(job_id, owner))

    def cancel(self, job_id: str, owner: str = "anonymous") -> dict[str, Any]:
        """Cancel a queued job or stop a running one; a finished job is left as it is.

        A worker may take a queued job between our reading its status and cancelling it, so
        the cancel is also recorded (`cancel_key`): the job checks it before every query and
        stops there, reporting `canceled` with what it had done (`_describe`)."""
        from rq.command import send_stop_job_command
        from rq.exceptions import InvalidJobOperation
        from rq.job import JobStatus

        job = self._fetch(job_id, owner)
        status = job.get_status()
        if status not in (JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED):
            job.connection.set(cancel_key(job.id), 1, ex=self.result_ttl_s)
        try:
            if status == JobStatus.STARTED:
                send_stop_job_command(job.connection, job.id, serializer=job.serializer)
            elif status in (JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED):
                job.cancel()
        except InvalidJobOperation:
            pass  # it finished in between
        return self._describe(job)

    @staticmethod
    def _describe(job: Any) -> dict[str, Any]:
        from rq.job import JobStatus

        job.refresh()
        status = job.get_status()
        meta = job.meta or {}
        out: dict[str, Any] = {
            "id": job.id,
            "status": str(status.value if status is not None else "expired"),
            "done": int(meta.get("done", 0)),
            "total": int(meta.get("total", 0)),
            "results": None,
            "error": None,
            "created_at": job.created_at.isoformat() if job.created_at else None,
            "ended_at": job.ended_at.isoformat() if job.ended_at else None,
        }
        if meta.get("canceled"):  # stopped by a cancel at a query boundary (see `cancel`)
            out["status"] = "canceled"
            out["results"] = job.return_value() if status == JobStatus.FINISHED else None
        elif status == JobStatus.FINISHED:
            out["results"] = job.return_value()
            out["done"] = out["total"]
        elif status == JobStatus.FAILED:
            result = job.latest_result()
            lines = (result.exc_string or "").strip().splitlines() if result else []
            out["error"] = lines[-1] if lines else "the job failed"
        return out
