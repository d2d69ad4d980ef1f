"""`exemplar-worker`: run Exemplar jobs from a Redis queue (RQ, JSON payloads)."""

from __future__ import annotations

import argparse
import logging
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from worker.keys import DEFAULT_QUEUE

log = logging.getLogger("exemplar.worker")
MAX_BACKOFF_S = 30.0
"""Longest wait between two checks whether a lost Redis is back."""


class WorkerSettings(BaseSettings):
    """Worker settings (environment variables prefixed EXEMPLAR_)."""

    model_config = SettingsConfigDict(env_prefix="EXEMPLAR_", frozen=True, env_ignore_empty=True)

    redis_url: str = "redis://127.0.0.1:6379/0"
    queue: str = DEFAULT_QUEUE
    index_dir: Path | None = Field(None, description="index to load at start-up (jobs name their own)")
    model_dir: Path | None = Field(
        None, description="where the indexes' model is, when not where their manifests say (checked by checksum)"
    )
    adapter_dir: Path | None = Field(None, description="where the indexes' LoRA adapter is (as model_dir)")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N: where models run (auto: a GPU if any)")
    heartbeat: int = Field(
        30, ge=1, description="seconds between heartbeats; a job is abandoned (and retried) after 3 missed"
    )
    blas_threads: int = Field(1, ge=1, description="numpy BLAS (OpenBLAS) threads of the worker and its jobs")


def main(argv: list[str] | None = None) -> None:
    from redis import Redis
    from rq import Queue, SimpleWorker, Worker
    from rq.serializers import JSONSerializer

    from exemplar.errors import ExemplarError
    from exemplar.threads import limit_blas_threads
    from worker.jobs import MODEL_AT, load_explainer

    parser = argparse.ArgumentParser(prog="exemplar-worker", description=__doc__)
    parser.add_argument("--redis", help="Redis URL (default redis://127.0.0.1:6379/0)")
    parser.add_argument("--queue", help=f"queue name (default {DEFAULT_QUEUE})")
    parser.add_argument("--index", type=Path, help="index to load once at start-up")
    parser.add_argument("--model", type=Path, help="where the indexes' model is, if it moved (checked by checksum)")
    parser.add_argument("--adapter", type=Path, help="where the indexes' LoRA adapter is, if it moved")
    parser.add_argument("--device", help="auto | cpu | cuda | cuda:N (default auto)")
    parser.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 0 if a worker on this host heartbeats in Redis, else 1 (a container healthcheck)",
    )
    parser.add_argument(
        "--heartbeat", type=int, help="seconds between heartbeats (default 30); 3 missed = job abandoned"
    )
    args = parser.parse_args(argv)
    overrides = {
        k: v
        for k, v in {
            "redis_url": args.redis,
            "queue": args.queue,
            "index_dir": args.index,
            "model_dir": args.model,
            "adapter_dir": args.adapter,
            "device": args.device,
            "heartbeat": args.heartbeat,
        }.items()
        if v is not None
    }
    settings = WorkerSettings(**overrides)
    if args.check:
        sys.exit(0 if heartbeating(Redis.from_url(settings.redis_url, socket_timeout=3), settings.heartbeat) else 1)
    logging.basicConfig(level=logging.INFO)
    limit_blas_threads(settings.blas_threads)
    MODEL_AT.update(
        model_dir=str(settings.model_dir) if settings.model_dir else None,
        adapter_dir=str(settings.adapter_dir) if settings.adapter_dir else None,
        device=settings.device,
    )
    # RQ's Worker runs each job in a forked child, and CUDA cannot be used in a child forked after
    # the parent started it (the index loaded at start-up): on a GPU jobs run in the worker itself
    from exemplar.models import resolve_device

    try:
        on_gpu = resolve_device(settings.device).startswith("cuda")
    except ExemplarError as exc:
        parser.exit(2, f"exemplar-worker: error: {exc}\n")
    base = SimpleWorker if on_gpu else Worker
    if settings.index_dir is not None:
        try:
            load_explainer(str(settings.index_dir))
        except ExemplarError as exc:
            parser.exit(2, f"exemplar-worker: error: {exc}\n")
    connection = Redis.from_url(settings.redis_url)

    def make_worker() -> Any:
        queue = Queue(settings.queue, connection=connection, serializer=JSONSerializer)
        return _worker_class(base)(
            [queue],
            connection=connection,
            serializer=JSONSerializer,
            job_monitoring_interval=settings.heartbeat,
            worker_ttl=3 * settings.heartbeat,  # so `--check` sees a live worker within 3 heartbeats
            maintenance_interval=settings.heartbeat,  # retries abandoned jobs soon after their heartbeat expires
        )

    work_through_outages(make_worker, connection, burst=args.burst)


def heartbeating(connection: Any, heartbeat_s: int, hostname: str | None = None) -> bool:
    """A worker registered from this host (its container) has heartbeated in Redis within 3 heartbeats.

    An idle RQ worker heartbeats each time its blocking wait for a job ends (worker_ttl - 15 s),
    a busy one each `heartbeat_s` while it monitors its job; a dead one's key expires."""
    from datetime import UTC, datetime, timedelta

    from redis.exceptions import RedisError
    from rq import Worker

    hostname = hostname or socket.gethostname()
    try:
        workers = Worker.all(connection=connection)
    except RedisError:
        return False
    recent = datetime.now(UTC) - timedelta(seconds=3 * heartbeat_s)
    for worker in workers:
        beat = worker.last_heartbeat
        if beat is not None and beat.tzinfo is None:
            beat = beat.replace(tzinfo=UTC)
        if worker.hostname == hostname and beat is not None and beat >= recent:
            return True
    return False


def work_through_outages(make_worker: Callable[[], Any], connection: Any, *, burst: bool = False) -> None:
    """Run a worker; when Redis goes away (RQ's loop raises a connection error, seen mid-job), wait
    for it with backoff (1 s doubling to `MAX_BACKOFF_S`) and start a fresh worker.

    The job that was running is not lost: its entry in RQ's started-job registry stops being
    heartbeated, so the next worker's maintenance retries it (as for a worker killed mid-job)."""
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    while True:
        try:
            make_worker().work(burst=burst)
            return
        except (RedisConnectionError, RedisTimeoutError) as exc:
            log.warning("lost Redis (%s); waiting for it to come back", exc)
        delay = 1.0
        while True:
            time.sleep(delay)
            try:
                connection.ping()
                break
            except (RedisConnectionError, RedisTimeoutError):
                delay = min(2 * delay, MAX_BACKOFF_S)
        log.info("Redis is back; starting a fresh worker")


def _worker_class(base: type) -> type:
    """RQ's forking Worker whose job heartbeats expire after 3 intervals (RQ: interval + 60 s).

    A worker killed mid-job (`kill -9`, a lost machine) stops heartbeating; once its job's
    entry in the started-job registry expires, RQ's registry cleanup retries the job.
    """

    class ExemplarWorker(base):
        def get_heartbeat_ttl(self, job: Any, working_time: float = 0.0) -> int:
            interval = self.job_monitoring_interval
            if job.timeout and job.timeout > 0:
                interval = min(interval, max(int(job.timeout - working_time), 1))
            return int(3 * interval)

    return ExemplarWorker
