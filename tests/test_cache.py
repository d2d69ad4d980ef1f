"""The optional Redis cache of explanations, against real Redis servers (one we start and stop)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from redis import Redis

from app.cache import index_version
from app.main import create_app
from app.settings import ApiSettings
from exemplar.build import append_index
from exemplar.store import read_manifest
from exemplar.tasks import Example

pytestmark = pytest.mark.integration
QUERY = {"text": "the cat sat on the mat", "k": 3}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if Redis(port=port).ping():
                return proc
        except Exception:
            time.sleep(0.05)
    proc.kill()
    pytest.fail("redis-server did not start")


@pytest.fixture
def index(tmp_path: Path, classifier_index: Path) -> Path:
    copy = tmp_path / "index"
    shutil.copytree(classifier_index, copy)
    return copy


@pytest.fixture
def redis_server() -> Iterator[int]:
    port = free_port()
    proc = start_redis(port)
    yield port
    proc.kill()
    proc.wait()


def test_identical_requests_hit_and_a_new_index_version_misses(index: Path, redis_server: int) -> None:
    settings = ApiSettings(index_dir=index, redis_url=f"redis://127.0.0.1:{redis_server}/0", watch_interval_s=0)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        first = c.post("/v1/explain", json=QUERY)
        assert first.status_code == 200
        assert first.headers["X-Cache"] == "miss"
        again = c.post(
            "/v1/explain", json={**QUERY, "strategy": "reconstruct", "score_space": "full"}
        )  # the defaults, spelled out
        assert again.headers["X-Cache"] == "hit"
        assert again.json() == first.json()
        other = c.post("/v1/explain", json={**QUERY, "k": 4})
        assert other.headers["X-Cache"] == "miss"
        version = index_version(read_manifest(index))
        assert len(Redis(port=redis_server).keys(f"exemplar:explain:{version}:*")) == 2
        assert c.get("/readyz").json()["details"]["cache"] == "ok"
        append_index(index, [Example(id="new", text="a new example", label=first.json()["prediction"]["label"])])
        assert c.post("/v1/admin/reload").status_code == 200
        after = c.post("/v1/explain", json=QUERY)
        assert after.headers["X-Cache"] == "miss"  # never an entry of the old version
        assert after.json()["index"]["n_examples"] == first.json()["index"]["n_examples"] + 1


def test_without_redis_the_service_answers_and_recovers_when_redis_returns(index: Path) -> None:
    port = free_port()
    settings = ApiSettings(index_dir=index, redis_url=f"redis://127.0.0.1:{port}/0")
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        down = c.post("/v1/explain", json=QUERY)
        assert down.status_code == 200
        assert down.headers["X-Cache"] == "miss"
        ready = c.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["details"]["cache"].startswith("down")
        proc = start_redis(port)
        try:
            assert c.get("/readyz").json()["details"]["cache"] == "ok"  # the probe retries at once
            assert c.post("/v1/explain", json=QUERY).headers["X-Cache"] == "miss"
            assert c.post("/v1/explain", json=QUERY).headers["X-Cache"] == "hit"
        finally:
            proc.kill()
            proc.wait()
        gone = c.post("/v1/explain", json=QUERY)
        assert gone.status_code == 200  # Redis died again: still answered, without the cache
        assert c.get("/readyz").json()["details"]["cache"].startswith("down")


def test_no_redis_configured_means_no_cache(index: Path) -> None:
    with TestClient(create_app(ApiSettings(index_dir=index)), raise_server_exceptions=False) as c:
        r = c.post("/v1/explain", json=QUERY)
        assert r.headers["X-Cache"] == "off"
        assert c.get("/readyz").json()["details"]["cache"] == "off"
