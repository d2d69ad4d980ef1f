"""The worker's batch job through a real Redis server and an RQ worker (JSON payloads)."""

from __future__ import annotations

import json
import uuid
import zlib
from pathlib import Path

import pytest
from redis import Redis
from rq import Queue, SimpleWorker
from rq.serializers import JSONSerializer

from worker.jobs import explain_batch

pytestmark = pytest.mark.integration


def test_batch_job_round_trip(redis: Redis, classifier_index: Path) -> None:
    queue = Queue(f"test-{uuid.uuid4().hex}", connection=redis, serializer=JSONSerializer)
    queries = [{"text": "the cat sat"}, {"text": "stocks fell", "label": "negative"}, {"colour": "red"}]
    job = queue.enqueue(explain_batch, str(classifier_index), queries, {"k": 3})
    SimpleWorker([queue], connection=redis, serializer=JSONSerializer).work(burst=True)
    job.refresh()
    assert job.get_status() == "finished", job.latest_result()
    results = job.return_value()
    assert len(results) == 3
    assert [len(r["examples"]) for r in results[:2]] == [3, 3]
    assert results[1]["prediction"]["explained_label"] == "negative"
    assert sum(e["weight"] for e in results[0]["examples"]) == pytest.approx(1.0, abs=1e-5)
    assert "expected an object" in results[2]["error"]
    # a job's result has the shape of a /v1/explain response: one serialiser (Explanation.to_dict)
    from app.schemas import ExplainResponse

    for result in results[:2]:  # jobs never generate a response (they need one): no generated_response
        assert set(result) == set(ExplainResponse.model_fields) - {"generated_response"}
        assert ExplainResponse(**result).model_dump(mode="json", exclude={"generated_response"}) == result
    assert results[0]["k"] == 3
    assert results[0]["index"]["n_examples"] > 0
    stored = redis.hget(f"rq:job:{job.id}", "data")
    assert stored is not None
    payload = json.loads(zlib.decompress(stored))  # JSON, not pickle
    assert payload[2][1] == queries


def test_worker_reopens_an_index_replaced_by_a_new_version(tmp_path: Path, classifier_index: Path) -> None:
    import shutil

    from exemplar.build import append_index
    from exemplar.tasks import Example
    from worker.jobs import load_explainer

    index = tmp_path / "index"
    shutil.copytree(classifier_index, index)
    first = load_explainer(str(index))
    assert load_explainer(str(index)) is first  # opened once
    append_index(index, [Example(id="fresh", text="a fresh example", label=first.store.manifest.labels[0])])
    second = load_explainer(str(index))
    assert second is not first
    assert second.store.n == first.store.n + 1


def test_worker_keeps_at_most_max_open_indexes(tmp_path: Path, classifier_index: Path) -> None:
    import shutil

    from worker import jobs

    dirs = [tmp_path / f"index-{i}" for i in range(jobs.MAX_OPEN_INDEXES + 1)]
    for index in dirs:
        shutil.copytree(classifier_index, index)
    jobs._explainers.clear()
    try:
        first = jobs.load_explainer(str(dirs[0]))
        for index in dirs[1:]:
            jobs.load_explainer(str(index))
        assert len(jobs._explainers) == jobs.MAX_OPEN_INDEXES
        assert str(dirs[0]) not in jobs._explainers  # the least recently used went
        jobs.load_explainer(str(dirs[-1]))  # using one makes it the most recent
        assert list(jobs._explainers)[-1] == str(dirs[-1])
        assert jobs.load_explainer(str(dirs[0])) is not first  # opened again after it went
        assert str(dirs[1]) not in jobs._explainers
    finally:
        jobs._explainers.clear()


def test_batch_job_refuses_over_long_queries_unless_truncating(classifier_index: Path) -> None:
    long_query = {"text": " ".join(["word"] * 200)}  # the test index has max_length 32
    refused = explain_batch(str(classifier_index), [long_query, {"text": "short"}], {"k": 2}, False)
    assert "max_length of 32 tokens" in refused[0]["error"]
    assert len(refused[1]["examples"]) == 2
    cut = explain_batch(str(classifier_index), [long_query], {"k": 2}, True)
    assert cut[0]["prediction"]["truncated"] is True


def test_check_sees_this_hosts_worker_heartbeat_in_redis(redis: Redis) -> None:
    """`exemplar-worker --check`, the compose healthcheck: a worker registered from this host that
    heartbeated within 3 intervals; not another host's, not a stale or a dead one."""
    import socket
    import subprocess
    from datetime import UTC, datetime, timedelta

    from app.process import BIN, ENV
    from worker.main import heartbeating

    db = Redis.from_url("redis://127.0.0.1:6379/12")  # its own database: other suites' workers stay out

    def check() -> int:
        env = {**ENV, "EXEMPLAR_REDIS_URL": "redis://127.0.0.1:6379/12"}
        return subprocess.run([BIN / "exemplar-worker", "--check"], env=env, check=False).returncode

    for key in db.smembers("rq:workers"):  # workers other tests left registered
        db.srem("rq:workers", key)
    assert not heartbeating(db, 30)
    assert check() == 1
    worker = SimpleWorker([Queue(f"hb-{uuid.uuid4().hex}", connection=db)], connection=db)
    worker.register_birth()
    try:
        worker.heartbeat()
        assert heartbeating(db, 30)
        assert check() == 0
        assert not heartbeating(db, 30, hostname=f"not-{socket.gethostname()}")
        stale = (datetime.now(UTC) - timedelta(seconds=100)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        db.hset(worker.key, "last_heartbeat", stale)
        assert not heartbeating(db, 30)  # 100 s > 3 x 30 s
        assert heartbeating(db, 40)
    finally:
        worker.register_death()
    assert not heartbeating(db, 30)
    assert not heartbeating(Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5), 30)  # no Redis


def test_worker_opens_a_moved_model_where_it_is_told(
    tmp_path: Path, classifier_dir: Path, classifier_index: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from exemplar.errors import NotFoundError
    from tests.conftest import copy_without_its_model
    from worker import jobs

    index = copy_without_its_model(classifier_index, tmp_path / "index")
    with pytest.raises(NotFoundError, match="EXEMPLAR_MODEL_DIR"):
        jobs.load_explainer(str(index))
    monkeypatch.setitem(jobs.MODEL_AT, "model_dir", str(shutil.copytree(classifier_dir, tmp_path / "model")))
    assert jobs.load_explainer(str(index)).store.n > 0
