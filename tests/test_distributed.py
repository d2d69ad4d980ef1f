"""Distributed builds: `index-builder build --distributed` with real `exemplar-worker` processes on loopback Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from redis import Redis
from rq import Queue, SimpleWorker
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer
from rq.utils import import_attribute

from exemplar.build import ShardDir, ShardTask
from tests.conftest import classification_rows, write_jsonl
from tests.test_e2e import BIN, ENV, run_builder
from worker import keys
from worker.distributed import BuildFailedError, RQShardRunner
from worker.jobs import build_shard, explain_batch

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REDIS_URL = "redis://127.0.0.1:6379/15"


@pytest.fixture
def build_args(tmp_path: Path, classifier_dir: Path) -> list[str]:
    rows = [{**r, "id": f"{r['id']}-{i}"} for i in range(6) for r in classification_rows()]
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    return [
        "--model",
        str(classifier_dir),
        "--task",
        "classification",
        "--data",
        str(data),
        "--proj-dim",
        "16",
        "--shard-size",
        "12",
    ]


def start_worker(queue: str, log: Path, redis_url: str = REDIS_URL) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [BIN / "exemplar-worker", "--redis", redis_url, "--queue", queue, "--heartbeat", "1"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=ENV,
        )


def start_builder(args: list[str], out: Path, queue: str) -> subprocess.Popen[str]:
    cli = [BIN / "index-builder", "build", *args, "--out", str(out), "--distributed", "--redis", REDIS_URL]
    return subprocess.Popen(
        [*cli, "--queue", queue], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV
    )


def stop(*procs: subprocess.Popen[bytes]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def test_two_workers_build_the_same_index_as_one_process(tmp_path: Path, build_args: list[str], redis: Redis) -> None:
    reference = run_builder(*build_args, "--out", tmp_path / "ref")
    assert reference.returncode == 0, reference.stderr
    queue = f"test-build-{uuid.uuid4().hex}"
    workers = [start_worker(queue, tmp_path / f"worker{i}.log") for i in range(2)]
    try:
        builder = start_builder(build_args, tmp_path / "dist", queue)
        stdout, stderr = builder.communicate(timeout=240)
    finally:
        stop(*workers)
    assert builder.returncode == 0, stderr
    assert "18 shard job(s)" in stderr
    assert "216 examples" in stdout
    np.testing.assert_array_equal(np.load(tmp_path / "dist" / "vectors.npy"), np.load(tmp_path / "ref" / "vectors.npy"))
    assert not (tmp_path / ".dist.shards").exists()
    logs = [(tmp_path / f"worker{i}.log").read_text() for i in range(2)]
    assert all("Job OK" in log for log in logs), "both workers should have computed shards"


def test_a_worker_killed_mid_shard_loses_nothing(tmp_path: Path, build_args: list[str], redis: Redis) -> None:
    reference = run_builder(*build_args, "--out", tmp_path / "ref")
    assert reference.returncode == 0, reference.stderr
    queue = f"test-build-{uuid.uuid4().hex}"
    builder = start_builder(build_args, tmp_path / "dist", queue)
    rq_queue = Queue(queue, connection=redis, serializer=JSONSerializer)
    victim = start_worker(queue, tmp_path / "victim.log")
    survivor = None
    try:
        registry = StartedJobRegistry(queue=rq_queue)
        started: list[str] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not started:  # a shard job the work horse is running
            started = [i for i in registry.get_job_ids() if rq_queue.fetch_job(i).get_status() == "started"]
            time.sleep(0.01)
        assert started, "the victim never started a shard"
        for pid in [*children(victim.pid), victim.pid]:  # the work horse (own process group) and the worker
            os.kill(pid, signal.SIGKILL)
        victim.wait()
        survivor = start_worker(queue, tmp_path / "survivor.log")
        _, stderr = builder.communicate(timeout=240)
    finally:
        stop(victim, *([survivor] if survivor else []))
        if builder.poll() is None:
            builder.kill()
    assert builder.returncode == 0, stderr
    np.testing.assert_array_equal(np.load(tmp_path / "dist" / "vectors.npy"), np.load(tmp_path / "ref" / "vectors.npy"))
    job = rq_queue.fetch_job(started[0])
    assert job is not None
    assert job.get_status() == "finished"
    assert (job.retries_left or 0) < 3, "the killed shard should have been retried"


def test_a_failing_shard_fails_the_build_with_the_reason(tmp_path: Path, redis: Redis) -> None:
    shards = ShardDir.open(tmp_path / "shards", {"plan": 1})
    spec = {"shards_dir": str(shards.path), "plan": "not-this-plan"}
    task = ShardTask("final-000000", 0, 4, str(tmp_path), None, "x")
    queue = f"test-build-{uuid.uuid4().hex}"
    runner = RQShardRunner(REDIS_URL, queue=queue, retries=1, poll=0.05)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            runner(shards, spec, [task])
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    rq_queue = Queue(queue, connection=redis, serializer=JSONSerializer)
    deadline = time.monotonic() + 30
    while thread.is_alive() and time.monotonic() < deadline:
        SimpleWorker([rq_queue], connection=redis, serializer=JSONSerializer).work(burst=True)
        time.sleep(0.05)
    thread.join(timeout=30)
    assert len(errors) == 1
    assert isinstance(errors[0], BuildFailedError)
    assert "after 2 attempt(s)" in str(errors[0])
    assert "belongs to another build" in str(errors[0])


def test_unreachable_redis_is_a_clear_cli_error(tmp_path: Path, build_args: list[str]) -> None:
    r = subprocess.run(
        [
            BIN / "index-builder",
            "build",
            *build_args,
            "--out",
            str(tmp_path / "x"),
            "--distributed",
            "--redis",
            "redis://127.0.0.1:1/0",
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=240,
    )
    assert r.returncode == 2
    assert "cannot reach Redis at redis://127.0.0.1:1/0" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_job_lost_between_dequeue_and_start_is_enqueued_again(tmp_path: Path, redis: Redis) -> None:
    shards = ShardDir.open(tmp_path / "shards", {"plan": 2})
    spec = {"shards_dir": str(shards.path), "plan": shards.plan_checksum()}
    task = ShardTask("final-000000", 0, 4, str(tmp_path), None, "x")
    queue = f"test-build-{uuid.uuid4().hex}"
    rq_queue = Queue(queue, connection=redis, serializer=JSONSerializer)
    runner = RQShardRunner(REDIS_URL, queue=queue, poll=0.05, stuck_after=0.3)
    thread = threading.Thread(target=runner, args=(shards, spec, [task]), daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not rq_queue.get_job_ids():
        time.sleep(0.01)
    job_id = rq_queue.get_job_ids()[0]
    assert job_id == keys.shard_job_id(spec["plan"], task.name)
    # a worker takes the job (RQ moves it to the intermediate list) and dies before starting it
    redis.lmove(rq_queue.key, rq_queue.intermediate_queue.key)
    assert rq_queue.get_job_ids() == []
    while time.monotonic() < deadline and rq_queue.get_job_ids() != [job_id]:
        time.sleep(0.05)
    assert rq_queue.get_job_ids() == [job_id], "the lost job was not enqueued again"
    assert job_id not in rq_queue.intermediate_queue.get_job_ids()
    shards.save(task.name, np.zeros((4, 3), dtype=np.float32))  # as a worker would: the runner returns
    thread.join(timeout=10)
    assert not thread.is_alive()


def test_job_paths_name_the_functions_workers_run() -> None:
    assert import_attribute(keys.EXPLAIN_BATCH_JOB) is explain_batch
    assert import_attribute(keys.BUILD_SHARD_JOB) is build_shard
