"""The Python client (`client/`, package exemplar-client): its models against the service's OpenAPI
document, its retries on a fake transport, and every call against a live server, Redis and worker."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from exemplar_client import AsyncClient, Client, ExemplarError, Explanation, JobError, Query
from exemplar_client.client import retry_delay
from exemplar_client.models import MODELS_BY_SCHEMA

from app.process import BIN, ENV, running_api
from app.schemas import ExampleOut
from app.security import key_hash

ROOT = Path(__file__).resolve().parent.parent
KEY = "client-test-key"


@pytest.mark.parametrize("schema", sorted(MODELS_BY_SCHEMA))
def test_client_models_match_the_openapi_document(schema: str) -> None:
    spec = json.loads((ROOT / "docs" / "openapi.json").read_text())["components"]["schemas"][schema]
    model = MODELS_BY_SCHEMA[schema]
    if schema == "ExampleOut":  # its serializer hides the properties from the document: use the server's model
        server_fields = set(ExampleOut.model_fields)
        server_required = {n for n, f in ExampleOut.model_fields.items() if f.is_required()}
    else:
        server_fields, server_required = set(spec["properties"]), set(spec.get("required", []))
    client_required = {n for n, f in model.model_fields.items() if f.is_required()}
    assert set(model.model_fields) == server_fields, schema
    assert client_required == server_required, schema


def fake(answers: list[httpx.Response], seen: list[httpx.Request]) -> httpx.Client:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answers.pop(0)

    return httpx.Client(base_url="http://exemplar.test", transport=httpx.MockTransport(handler))


def test_429_and_503_are_retried_honouring_retry_after(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr("exemplar_client.client.time.sleep", slept.append)
    seen: list[httpx.Request] = []
    answers = [
        httpx.Response(429, headers={"Retry-After": "7"}, json={"error": "rate limit"}),
        httpx.Response(503, json={"error": "busy"}),  # no Retry-After: backoff
        httpx.Response(200, json={"task": "classification"}),
    ]
    client = Client(api_key="k", http=fake(answers, seen), backoff_s=0.5)
    assert client.request("GET", "/v1/index") == {"task": "classification"}
    assert slept == [7.0, 1.0]  # Retry-After, then 0.5 * 2**1
    assert all(r.headers["Authorization"] == "Bearer k" for r in seen)

    seen.clear()
    refused = [httpx.Response(429, headers={"Retry-After": "1"}, json={"error": "no", "error_type": "RateLimited"})] * 3
    with pytest.raises(ExemplarError) as error:
        Client(http=fake(refused, seen), retries=2).request("GET", "/v1/index")
    assert (error.value.status, error.value.error_type, len(seen)) == (429, "RateLimited", 3)
    assert retry_delay(httpx.Response(503, headers={"Retry-After": "600"}), 0, 0.5, 30.0) == 30.0  # capped


def test_other_errors_are_raised_at_once_with_the_servers_message() -> None:
    seen: list[httpx.Request] = []
    answers = [httpx.Response(422, json={"error": "k: must be >= 1", "error_type": "InvalidInput", "request_id": "r1"})]
    with pytest.raises(ExemplarError, match=r"422 InvalidInput: k: must be >= 1 \(request r1\)"):
        Client(http=fake(answers, seen)).explain(text="x", k=0)
    assert len(seen) == 1
    assert json.loads(seen[0].content) == {"text": "x", "k": 0}  # unset options are left to the server
    with pytest.raises(ValueError, match="extra"):
        Client(http=fake([], seen)).explain(text="x", kk=3)  # a typo fails here, not as a 422


def test_a_job_is_not_submitted_twice_and_ids_are_quoted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("exemplar_client.client.time.sleep", lambda s: None)
    seen: list[httpx.Request] = []

    def broken(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        raise httpx.ReadError("connection reset", request=request)  # sent; the answer was lost

    client = Client(http=httpx.Client(base_url="http://exemplar.test", transport=httpx.MockTransport(broken)))
    with pytest.raises(httpx.ReadError):
        client.submit(["the cat sat"])
    assert len(seen) == 1  # it may have been queued: not sent again
    with pytest.raises(httpx.ReadError):
        client.explain(text="the cat sat")
    assert len(seen) == 1 + 5  # an explanation changes nothing: retried
    answers = [httpx.Response(200, json={"id": "doc/3?x", "source": "s"})]
    seen.clear()
    assert Client(http=fake(answers, seen)).example("doc/3?x").id == "doc/3?x"
    assert seen[0].url.raw_path == b"/v1/examples/doc%2F3%3Fx"
    proxy_page = [httpx.Response(502, text="<html>bad gateway</html>")]
    with pytest.raises(ExemplarError, match="502 error: <html>bad gateway</html>"):
        Client(http=fake(proxy_page, seen), retries=0).index()
    listed = [httpx.Response(500, json=["not", "a", "dict"])]
    with pytest.raises(ExemplarError, match="500"):
        Client(http=fake(listed, seen), retries=0).index()


@pytest.fixture(scope="module")
def service(classifier_index: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A live `exemplar-api` with an API key and Redis; yields (url, queue)."""
    queue = f"client-{uuid.uuid4().hex}"
    env = {
        "EXEMPLAR_API_KEYS": json.dumps({"tests": key_hash(KEY)}),
        "EXEMPLAR_REDIS_URL": "redis://127.0.0.1:6379/14",
        "EXEMPLAR_QUEUE": queue,
    }
    with running_api(classifier_index, tmp_path_factory.mktemp("client") / "api.log", **env) as url:
        yield url, queue


@pytest.mark.integration
def test_sync_client_against_a_live_server(service: tuple[str, str], classifier_index: Path, redis: Any) -> None:
    url, queue = service
    with Client(url, api_key=KEY) as exemplar:
        assert exemplar.ready()
        info = exemplar.index()
        assert info.task == "classification"
        assert info.n_examples == 36
        explanation = exemplar.explain(text="stocks fell", k=3, strategy="balanced")
        assert isinstance(explanation, Explanation)
        assert len(explanation.examples) == 3
        assert sum(e.weight or 0 for e in explanation.examples) == pytest.approx(1.0, abs=1e-5)
        assert exemplar.example(explanation.examples[0].id).id == explanation.examples[0].id
        comparison = exemplar.compare(text="stocks fell", k=2, strategies=["topk", "balanced"], ks=[1, 2])
        assert [p.strategy for p in comparison.by_strategy] == ["topk", "balanced"]

        waiting = exemplar.submit(["the cat sat"])  # no worker yet: it waits in the queue
        assert exemplar.cancel(waiting.id).status == "canceled"

        worker = subprocess.Popen(
            [BIN / "exemplar-worker", "--redis", "redis://127.0.0.1:6379/14", "--queue", queue], env=ENV
        )
        try:
            job = exemplar.submit([Query(text="stocks fell"), "the cat sat", {"text": "a", "label": "nope"}], {"k": 2})
            progress = io.StringIO()
            results = list(exemplar.results(job.id, poll_s=0.2, timeout_s=120, progress=progress))
        finally:
            worker.terminate()
            worker.wait(timeout=30)
        assert [type(r) for r in results] == [Explanation, Explanation, JobError]
        assert "label" in results[2].error  # type: ignore[union-attr]
        assert f"job {job.id[:8]}: 3/3 finished" in progress.getvalue()

    with Client(url) as anonymous, pytest.raises(ExemplarError) as refused:
        anonymous.index()
    assert refused.value.status == 401


@pytest.mark.integration
def test_async_client_against_a_live_server(service: tuple[str, str]) -> None:
    url, _ = service

    async def main() -> tuple[int, list[int]]:
        async with AsyncClient(url, api_key=KEY) as exemplar:
            assert await exemplar.ready()
            info = await exemplar.index()
            many = await asyncio.gather(*(exemplar.explain(text=t, k=2) for t in ("stocks fell", "the cat sat")))
            return info.n_examples, [len(e.examples) for e in many]

    assert asyncio.run(main()) == (36, [2, 2])
