"""`exemplar-worker`: run Exemplar jobs from a Redis queue (RQ, JSON payloads)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

QUEUE = "exemplar"


class WorkerSettings(BaseSettings):
    """Worker settings (environment variables prefixed EXEMPLAR_)."""

    model_config = SettingsConfigDict(env_prefix="EXEMPLAR_", frozen=True)

    redis_url: str = "redis://127.0.0.1:6379/0"
    queue: str = QUEUE
    index_dir: Path | None = Field(None, description="index to load at start-up (jobs name their own)")


def main(argv: list[str] | None = None) -> None:
    from redis import Redis
    from rq import Queue, Worker
    from rq.serializers import JSONSerializer

    from exemplar.errors import ExemplarError
    from worker.jobs import load_explainer

    parser = argparse.ArgumentParser(prog="exemplar-worker", description=__doc__)
    parser.add_argument("--redis", help="Redis URL (default redis://127.0.0.1:6379/0)")
    parser.add_argument("--queue", help=f"queue name (default {QUEUE})")
    parser.add_argument("--index", type=Path, help="index to load once at start-up")
    parser.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    args = parser.parse_args(argv)
    overrides = {
        k: v
        for k, v in {"redis_url": args.redis, "queue": args.queue, "index_dir": args.index}.items()
        if v is not None
    }
    settings = WorkerSettings(**overrides)
    logging.basicConfig(level=logging.INFO)
    if settings.index_dir is not None:
        try:
            load_explainer(str(settings.index_dir))
        except ExemplarError as exc:
            parser.exit(2, f"exemplar-worker: error: {exc}\n")
    connection = Redis.from_url(settings.redis_url)
    queue = Queue(settings.queue, connection=connection, serializer=JSONSerializer)
    Worker([queue], connection=connection, serializer=JSONSerializer).work(burst=args.burst)
