"""Batch jobs over HTTP with a real Redis and real `exemplar-worker` processes (one killed mid-job)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from redis import Redis
from redis.exceptions import RedisError

from app.main import create_app
from app.settings import ApiSettings
from tests.test_distributed import REDIS_URL, children, start_worker, stop

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def queue() -> str:
    return f"test-jobs-{uuid.uuid4().hex}"


@pytest.fixture
def client(classifier_index: Path, queue: str) -> Iterator[TestClient]:
    settings = ApiSettings(index_dir=classifier_index, redis_url=REDIS_URL, queue=queue)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


def wait_for(client: TestClient, job_id: str, until: set[str], timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
        if body["status"] in until:
            return body
        time.sleep(0.1)
    pytest.fail(f"job {job_id} never reached {until}: {body}")


def test_job_round_trip_with_a_real_worker(client: TestClient, queue: str, tmp_path: Path) -> None:
    queries = [{"text": "the cat sat"}, {"text": "stocks fell", "label": "negative"}]
    r = client.post("/v1/jobs", json={"queries": queries, "options": {"k": 3, "strategy": "topk"}})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["status"] == "queued"
    assert job["total"] == 2
    worker = start_worker(queue, tmp_path / "worker.log")
    try:
        done = wait_for(client, job["id"], {"finished", "failed"})
    finally:
        stop(worker)
    assert done["status"] == "finished", done
    assert done["done"] == 2
    assert [len(res["examples"]) for res in done["results"]] == [3, 3]
    assert done["results"][1]["prediction"]["explained_label"] == "negative"
    assert done["results"][0]["strategy"] == "topk"


def test_a_worker_killed_mid_job_loses_nothing(client: TestClient, queue: str, tmp_path: Path) -> None:
    queries = [{"text": f"query number {i} about markets and weather"} for i in range(150)]
    job = client.post("/v1/jobs", json={"queries": queries, "options": {"k": 2, "strategy": "topk"}}).json()
    victim = start_worker(queue, tmp_path / "victim.log")
    survivor = None
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            body = client.get(f"/v1/jobs/{job['id']}").json()
            if body["status"] == "started" and body["done"] > 0:
                break
            time.sleep(0.05)
        assert body["status"] == "started", body
        assert body["done"] < body["total"], "the job finished before the worker could be killed"
        for pid in [*children(victim.pid), victim.pid]:
            os.kill(pid, signal.SIGKILL)
        victim.wait()
        survivor = start_worker(queue, tmp_path / "survivor.log")
        done = wait_for(client, job["id"], {"finished", "failed"})
    finally:
        stop(victim, *([survivor] if survivor else []))
    assert done["status"] == "finished", done
    assert len(done["results"]) == 150
    assert all("examples" in res for res in done["results"])


def test_cancel_a_queued_job_and_unknown_ids(client: TestClient) -> None:
    job = client.post("/v1/jobs", json={"queries": [{"text": "nobody runs me"}]}).json()
    cancelled = client.delete(f"/v1/jobs/{job['id']}")
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "canceled"
    missing = client.get("/v1/jobs/no-such-job")
    assert missing.status_code == 404
    assert "no job" in missing.json()["error"]


def test_a_job_taken_before_its_cancel_stops_at_the_next_query(client: TestClient, queue: str, tmp_path: Path) -> None:
    """The race: a worker takes a queued job, then the cancel arrives. The cancel is recorded
    (worker.keys.cancel_key, here without RQ's own cancel, which only reaches queued jobs) and
    the job stops before its next query, reporting `canceled` with what it had done."""
    from redis import Redis

    from worker.keys import cancel_key

    queries = [{"text": f"query {i}"} for i in range(5)]
    job = client.post("/v1/jobs", json={"queries": queries, "options": {"k": 2, "strategy": "topk"}}).json()
    Redis.from_url(REDIS_URL).set(cancel_key(job["id"]), 1, ex=600)
    worker = start_worker(queue, tmp_path / "worker.log")
    try:
        done = wait_for(client, job["id"], {"canceled", "finished", "failed"})
        time.sleep(1.0)
        again = client.get(f"/v1/jobs/{job['id']}").json()
    finally:
        stop(worker)
    assert done["status"] == "canceled", done
    assert (done["done"], done["total"], done["results"]) == (0, 5, [])
    assert again == done  # the final state stays
    assert "cancelled after 0 of 5 queries" in (tmp_path / "worker.log").read_text()


@pytest.mark.parametrize("delay_s", [0.0, 0.2])
def test_cancel_right_after_submit_never_lets_the_job_run_to_the_end(
    client: TestClient, queue: str, tmp_path: Path, delay_s: float
) -> None:
    """Whenever the DELETE lands (queued, just taken, running), the final state is a cancel the
    worker honoured: `canceled` or `stopped`, before the last query, and it does not change."""
    worker = start_worker(queue, tmp_path / "worker.log")
    try:
        queries = [{"text": f"query number {i} about markets and weather"} for i in range(300)]
        job = client.post("/v1/jobs", json={"queries": queries, "options": {"k": 2, "strategy": "topk"}}).json()
        time.sleep(delay_s)
        answered = client.delete(f"/v1/jobs/{job['id']}")
        assert answered.status_code == 200, answered.text
        final = wait_for(client, job["id"], {"canceled", "stopped", "finished", "failed"})
        time.sleep(2.0)
        again = client.get(f"/v1/jobs/{job['id']}").json()
    finally:
        stop(worker)
    assert final["status"] in ("canceled", "stopped"), final
    assert again["status"] == final["status"], (final, again)
    assert again["done"] < again["total"] == 300, again


def start_redis(port: int, data_dir: Path) -> subprocess.Popen[bytes]:
    """A redis-server of our own (append-only file in `data_dir`, so a restart keeps the jobs)."""
    args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes", "--dir", str(data_dir)]
    proc = subprocess.Popen(
        ["redis-server", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if Redis(port=port, socket_timeout=1).ping():
                return proc
        except RedisError:
            time.sleep(0.1)
    proc.kill()
    pytest.fail("redis-server did not start")


def test_a_worker_outlives_a_redis_restart_mid_job(classifier_index: Path, queue: str, tmp_path: Path) -> None:
    """Redis killed under a running job and restarted: the worker waits for it instead of exiting,
    and the job is settled (retried and finished), not lost."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"redis://127.0.0.1:{port}/0"
    server = start_redis(port, tmp_path)
    worker = None
    try:
        settings = ApiSettings(index_dir=classifier_index, redis_url=url, queue=queue)
        with TestClient(create_app(settings), raise_server_exceptions=False) as c:
            queries = [{"text": f"query number {i} about markets and weather"} for i in range(150)]
            job = c.post("/v1/jobs", json={"queries": queries, "options": {"k": 2, "strategy": "topk"}}).json()
            worker = start_worker(queue, tmp_path / "worker.log", redis_url=url)
            body = wait_for(c, job["id"], {"started"}, timeout=120)
            server.kill()  # SIGKILL: no goodbye to the worker
            server.wait()
            time.sleep(3)
            assert worker.poll() is None, "the worker exited when Redis went away"
            server = start_redis(port, tmp_path)
            done = wait_for(c, job["id"], {"finished", "failed"}, timeout=240)
            assert worker.poll() is None, "the worker exited"
    finally:
        stop(*([worker] if worker else []))
        server.kill()
        server.wait()
    assert body["status"] == "started"
    assert done["status"] == "finished", done
    assert len(done["results"]) == 150
    assert "lost Redis" in (tmp_path / "worker.log").read_text()


def test_bad_jobs_are_422_naming_the_query(client: TestClient) -> None:
    wrong_task = client.post("/v1/jobs", json={"queries": [{"text": "ok"}, {"prompt": "p", "response": "r"}]})
    assert wrong_task.status_code == 422
    assert "queries.1" in wrong_task.json()["error"]
    assert client.post("/v1/jobs", json={"queries": []}).status_code == 422
    too_many = client.post("/v1/jobs", json={"queries": [{"text": "x"}] * 1001})
    assert too_many.status_code == 422
    assert client.post("/v1/jobs", json={"queries": [{"text": "x"}], "options": {"k": 0}}).status_code == 422


def test_jobs_without_redis_are_503_with_what_to_do(classifier_index: Path) -> None:
    with TestClient(create_app(ApiSettings(index_dir=classifier_index)), raise_server_exceptions=False) as c:
        r = c.post("/v1/jobs", json={"queries": [{"text": "x"}]})
        assert r.status_code == 503
        assert "EXEMPLAR_REDIS_URL" in r.json()["error"]
