"""API keys, per-key rate limits (real Redis) and per-key job limits."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.security import key_hash
from app.settings import ApiSettings

pytestmark = pytest.mark.integration
REDIS = "redis://127.0.0.1:6379/13"
KEYS = {"team-a": key_hash("key-a"), "team-b": key_hash("key-b")}


@pytest.fixture
def client(classifier_index: Path) -> Iterator[TestClient]:
    settings = ApiSettings(
        index_dir=classifier_index,
        redis_url=REDIS,
        api_keys={f"{name}-{uuid.uuid4().hex[:8]}": h for name, h in KEYS.items()},  # fresh rate-limit windows
        rate_limit_per_minute=5,
        max_jobs_per_key=2,
        queue=f"test-security-{uuid.uuid4().hex}",
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


def test_keys_are_required_and_checked(client: TestClient) -> None:
    missing = client.get("/v1/index")
    assert missing.status_code == 401
    assert "Authorization: Bearer" in missing.json()["error"]
    assert client.get("/v1/index", headers={"X-API-Key": "wrong"}).status_code == 401
    assert client.get("/v1/index", headers={"Authorization": "Bearer key-a"}).status_code == 200
    assert client.get("/v1/index", headers={"X-API-Key": "key-b"}).status_code == 200
    assert client.get("/healthz").status_code == 200  # probes stay open
    assert client.get("/readyz").status_code == 200


def test_rate_limit_per_key_with_retry_after(client: TestClient) -> None:
    a = {"X-API-Key": "key-a"}
    codes = [client.get("/v1/index", headers=a).status_code for _ in range(7)]
    assert codes[:5] == [200] * 5
    assert codes[5:] == [429, 429]
    limited = client.get("/v1/index", headers=a)
    assert 1 <= int(limited.headers["Retry-After"]) <= 61
    assert "rate limit" in limited.json()["error"]
    assert client.get("/v1/index", headers={"X-API-Key": "key-b"}).status_code == 200  # other keys unaffected


def test_no_secret_in_responses_or_logs(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("DEBUG"):
        client.get("/v1/index", headers={"X-API-Key": "key-a"})
        client.get("/v1/index", headers={"X-API-Key": "not-a-key-zzz"})
    logged = "\n".join(r.getMessage() + json.dumps(vars(r), default=str) for r in caplog.records)
    assert "key-a" not in logged
    assert "not-a-key-zzz" not in logged
    body = client.get("/v1/index", headers={"X-API-Key": "not-a-key-zzz"}).text
    assert "not-a-key-zzz" not in body


def test_concurrent_jobs_per_key_and_ownership(client: TestClient) -> None:
    a, b = {"X-API-Key": "key-a"}, {"X-API-Key": "key-b"}
    job = {"queries": [{"text": "nobody runs this"}]}
    first = client.post("/v1/jobs", json=job, headers=a)
    assert first.status_code == 202
    assert client.post("/v1/jobs", json=job, headers=a).status_code == 202
    third = client.post("/v1/jobs", json=job, headers=a)
    assert third.status_code == 429
    assert "2 batch jobs" in third.json()["error"]
    assert client.get(f"/v1/jobs/{first.json()['id']}", headers=b).status_code == 404  # not b's job
    assert client.delete(f"/v1/jobs/{first.json()['id']}", headers=a).json()["status"] == "canceled"
    assert client.post("/v1/jobs", json=job, headers=a).status_code == 202  # a slot is free again
