"""Distributed index builds: shards of a build run as RQ jobs on any number of `exemplar-worker`s.

`build_index(..., runner=RQShardRunner(redis_url))` enqueues one job per missing shard on a
Redis queue (JSON payloads), waits while workers (on any machine that reaches Redis and the
shared output directory) compute and save them, then merges and publishes as a local build
does. RQ is the engine: jobs carry `Retry(max=retries)`, and a worker killed mid-shard leaves
its job in RQ's started-job registry until the worker's heartbeat expires; the builder runs
the registry's cleanup while it waits, which re-enqueues such an abandoned job. Shards are
idempotent (atomic writes, checksummed, skipped when already saved), so a job run twice
costs time, never correctness.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

from exemplar.build import ShardDir, ShardTask
from exemplar.errors import ExemplarError, InvalidInputError
from exemplar.progress import Progress, SilentProgress
from worker.keys import BUILD_SHARD_JOB, DEFAULT_QUEUE, shard_job_id


class BuildFailedError(ExemplarError):
    """A shard of a distributed build failed on a worker after every retry."""


@dataclasses.dataclass
class RQShardRunner:
    """Runs shard tasks as RQ jobs and waits for them (a `exemplar.build.ShardRunner`).

    `retries`: re-runs per shard after a failure or an abandoned (killed) run;
    `job_timeout`: seconds one shard may take on a worker; `poll`: seconds between checks;
    `stuck_after`: seconds a job may sit dequeued but not started (a worker died between
    taking it and starting it, which RQ's started-job registry does not see) before it is
    enqueued again.
    """

    redis_url: str
    queue: str = DEFAULT_QUEUE
    retries: int = 3
    job_timeout: int = 3600
    poll: float = 0.5
    stuck_after: float = 60.0
    progress: Progress = dataclasses.field(default_factory=SilentProgress)
    notify: Callable[[str], None] = lambda message: None

    def __call__(self, shards: ShardDir, spec: dict[str, Any], tasks: list[ShardTask]) -> None:
        from redis import Redis
        from redis.exceptions import RedisError
        from rq import Queue, Retry
        from rq.job import Job, JobStatus
        from rq.serializers import JSONSerializer

        if not tasks:
            return
        try:
            connection = Redis.from_url(self.redis_url)
            connection.ping()
        except (RedisError, ValueError) as exc:
            raise InvalidInputError(f"cannot reach Redis at {self.redis_url}: {exc}") from exc
        queue = Queue(self.queue, connection=connection, serializer=JSONSerializer)

        def enqueue(task: ShardTask) -> Job:
            return queue.enqueue(
                BUILD_SHARD_JOB,
                spec,
                dataclasses.asdict(task),
                job_id=shard_job_id(spec["plan"], task.name),
                retry=Retry(max=self.retries) if self.retries > 0 else None,
                job_timeout=self.job_timeout,
                result_ttl=3600,
                failure_ttl=7 * 24 * 3600,
                description=f"shard {task.name} of {spec['shards_dir']}",
            )

        jobs = {task.name: (task, enqueue(task)) for task in tasks}
        stuck_since: dict[str, float] = {}
        self.notify(
            f"{len(tasks)} shard job(s) on queue {self.queue!r} at {self.redis_url}; "
            f"start workers with: exemplar-worker --redis {self.redis_url} --queue {self.queue}"
        )
        self.progress.start("gradients (distributed shards)", sum(t.count for t in tasks))
        try:
            while jobs:
                queue.started_job_registry.cleanup()  # re-enqueues jobs of workers that died mid-shard
                taken = set(queue.intermediate_queue.get_job_ids())  # dequeued by a worker
                started = set(queue.started_job_registry.get_job_ids())
                for name, (task, job) in list(jobs.items()):
                    if shards.has(name):
                        self.progress.advance(task.count)
                        del jobs[name]
                        continue
                    status = job.get_status(refresh=True)
                    if status == JobStatus.FAILED:
                        result = job.latest_result()
                        reason = (result.exc_string or "").strip().splitlines()[-1:] if result else []
                        raise BuildFailedError(
                            f"shard {name} failed on a worker after {self.retries + 1} attempt(s): "
                            f"{reason[0] if reason else 'no reason recorded'}"
                        )
                    lost = status is None or status in (JobStatus.CANCELED, JobStatus.STOPPED)
                    if status == JobStatus.QUEUED and job.id in taken and job.id not in started:
                        since = stuck_since.setdefault(name, time.monotonic())
                        if time.monotonic() - since > self.stuck_after:
                            queue.intermediate_queue.remove(job.id)
                            lost = True
                    else:
                        stuck_since.pop(name, None)
                    if lost:
                        stuck_since.pop(name, None)
                        jobs[name] = (task, enqueue(task))  # lost, expired or cancelled: run it again
                    elif status == JobStatus.FINISHED and not shards.has(name):
                        raise BuildFailedError(
                            f"a worker finished shard {name} but it is not in {shards.path}: "
                            "workers and the builder must share the output directory"
                        )
                if jobs:
                    time.sleep(self.poll)
        finally:
            self.progress.finish()
