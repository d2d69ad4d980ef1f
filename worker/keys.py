"""Every Redis key and RQ queue name of Exemplar, in one place: the API, the workers and the index builder use these.

- `DEFAULT_QUEUE`: the RQ queue of batch jobs and distributed-build shard jobs
  (`EXEMPLAR_QUEUE`, `exemplar-worker --queue`, `index-builder build --queue`).
- `EXPLAIN_BATCH_JOB`, `BUILD_SHARD_JOB`: the functions the jobs run, named by import path.
- `shard_job_id`: the RQ job id of one shard of one build plan.
- `active_jobs_key`: the set of one client's queued or running batch jobs (`app.jobs`).
- `cancel_key`: set by `DELETE /v1/jobs/{id}`; a running batch job stops at its next query.
- `explanation_key` (prefix `EXPLANATION_PREFIX`): one cached explanation (`app.cache`).
- `rate_limit_key`: one client's request count in one clock minute (`app.security`).

Nothing here imports redis or rq.
"""

from __future__ import annotations

import hashlib

DEFAULT_QUEUE = "exemplar"
EXPLAIN_BATCH_JOB = "worker.jobs.explain_batch"
BUILD_SHARD_JOB = "worker.jobs.build_shard"
EXPLANATION_PREFIX = "exemplar:explain:"


def shard_job_id(plan: str, shard: str) -> str:
    """The job of shard `shard` of the build whose plan checksum is `plan` (the same for every retry)."""
    return f"exemplar-shard-{hashlib.sha256(plan.encode()).hexdigest()[:16]}-{shard}"


def active_jobs_key(owner: str) -> str:
    """Set of the ids of `owner`'s batch jobs that may still be queued or running."""
    return f"exemplar:jobs:active:{owner}"


def cancel_key(job_id: str) -> str:
    """Present once `job_id` was cancelled: the job checks it between queries (`worker.jobs.explain_batch`)."""
    return f"exemplar:jobs:cancel:{job_id}"


def explanation_key(version: str, request_sha256: str) -> str:
    """A cached `/v1/explain` body: the index version and the sha256 of the normalised request."""
    return f"{EXPLANATION_PREFIX}{version}:{request_sha256}"


def rate_limit_key(client: str, minute: int) -> str:
    """Counter of `client`'s requests in clock minute `minute` (Unix time // 60)."""
    return f"exemplar:ratelimit:{client}:{minute}"
