"""The FastAPI app in-process: contracts, validation and error mapping."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import ApiSettings
from exemplar.errors import InvalidInputError
from exemplar.explain import Explainer
from exemplar.options import ExplainOptions
from exemplar.strategies import COMPARED
from exemplar.tasks import Example


@pytest.fixture(scope="module")
def client(classifier_index: Path) -> Iterator[TestClient]:
    settings = ApiSettings(index_dir=classifier_index, max_body_bytes=4096)
    with TestClient(create_app(settings, Explainer.from_index(classifier_index)), raise_server_exceptions=False) as c:
        yield c


def test_explain_contract(client: TestClient) -> None:
    r = client.post("/v1/explain", json={"text": "the cat sat on the mat", "k": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["examples"]) == 3
    assert len({e["id"] for e in body["examples"]}) == 3
    assert sum(e["weight"] for e in body["examples"]) == pytest.approx(1.0, abs=1e-5)
    assert all(e["weight"] >= 0 and "text" in e and "label" in e and "influence" in e for e in body["examples"])
    assert isinstance(body["score_db"], float)
    assert body["prediction"]["label"] in body["index"]["labels"]
    assert body["index"]["task"] == "classification"
    assert body["preset"] == "balanced"
    assert r.headers["X-Request-ID"]


def test_search_presets_are_echoed_and_checked(client: TestClient) -> None:
    exact = client.post("/v1/explain", json={"text": "the cat sat", "k": 3, "preset": "exact"})
    assert exact.status_code == 200, exact.text
    assert exact.json()["preset"] == "exact"
    fast = client.post("/v1/explain", json={"text": "the cat sat", "k": 3, "preset": "fast"})
    assert [e["id"] for e in fast.json()["examples"]] == [e["id"] for e in exact.json()["examples"]]  # Flat: exact
    bad = client.post("/v1/explain", json={"text": "the cat sat", "preset": "quick"})
    assert bad.status_code == 422
    assert "preset" in bad.json()["error"]
    index = client.get("/v1/index").json()
    assert index["index_type"] == "Flat"
    assert index["presets"] == ["exact", "balanced", "fast"]
    assert index["version"] == index["path"].rsplit("/", 1)[-1]


def test_index_describes_the_choices_a_client_can_make(client: TestClient) -> None:
    info = client.get("/v1/index").json()
    assert info["task"] == "classification"
    assert info["labels"] == ["negative", "neutral", "positive"]
    assert info["estimators"] == ["grad_dot", "grad_cos", "datainf", "bm25"]  # no checkpoints: no tracin
    assert "balanced" in info["strategies"]
    assert "auto" in info["strategies"]
    assert info["max_k"] == 50
    assert info["pool_size"] == 100
    assert info["model_checksum"]  # the manifest summary is still there


def test_compare_contract_matches_explain(client: TestClient) -> None:
    query = {"text": "the cat sat on the mat", "k": 3, "strategy": "topk", "estimator": "grad_cos"}
    r = client.post("/v1/compare", json=query)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["k"] == 3
    assert body["strategy"] == "topk"
    assert body["options"]["estimator"] == "grad_cos"
    assert [p["strategy"] for p in body["by_strategy"]] == list(COMPARED)
    assert [p["k"] for p in body["by_k"]] == [1, 3, 5, 10, 25]
    assert all(p["strategy"] == "topk" for p in body["by_k"])
    assert body["index"]["task"] == "classification"
    assert body["prediction"]["label"] in body["index"]["labels"]
    for point in body["by_strategy"]:
        explained = client.post("/v1/explain", json={**query, "strategy": point["strategy"]}).json()
        # the full-space passes batch compare's and explain's examples differently: float32 rounding
        assert point["score_db"] == pytest.approx(explained["score_db"], abs=1e-3), point["strategy"]
        assert point["projected_score_db"] == pytest.approx(explained["projected_score_db"], abs=1e-6)
        assert point["n_examples"] == len(explained["examples"])
    chosen = client.post("/v1/compare", json={**query, "strategies": ["topk"], "ks": [2, 2, 7]}).json()
    assert [p["k"] for p in chosen["by_k"]] == [2, 7]
    assert [p["strategy"] for p in chosen["by_strategy"]] == ["topk"]
    assert 'route="/v1/compare",status="200"' in client.get("/metrics").text


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"text": "x", "k": 0}, "k"),
        ({"text": "x", "ks": [0]}, "ks.0"),
        ({"text": "x", "ks": []}, "ks"),
        ({"text": "x", "ks": list(range(1, 10))}, "ks"),
        ({"text": "x", "strategies": ["best"]}, "strategies.0"),
        ({"text": "x", "strategy": "self"}, "not a training example"),
        ({"text": "x", "estimator": "tracin"}, "checkpoints"),
        ({"text": "x", "estimator": "bm25", "ordering": "most_harmful"}, "similarity without sign"),
        ({"prompt": "p", "response": "r"}, "classifier"),
        ({"text": "x", "label": "sideways"}, "unknown label"),
        ({}, "send one of"),
    ],
)
def test_compare_bad_input_is_422(client: TestClient, body: dict[str, object], message: str) -> None:
    r = client.post("/v1/compare", json=body)
    assert r.status_code == 422, r.text
    assert message in r.json()["error"]
    assert r.json()["error_type"] == "invalid_input"


def test_the_web_page_is_served_locally(client: TestClient) -> None:
    import re

    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert "/static/app.js" in assets
    assert "/static/style.css" in assets
    for asset in assets:  # nothing from another origin (no CDN)
        assert asset.startswith(("/", "#", "data:")), asset
        if asset.startswith("/static/"):
            assert client.get(asset).status_code == 200, asset
    assert client.get("/static/nope.js").status_code == 404
    assert "/" not in client.get("/openapi.json").json()["paths"]


def test_example_lookup(client: TestClient) -> None:
    first = client.post("/v1/explain", json={"text": "stocks fell", "k": 1}).json()["examples"][0]
    r = client.get(f"/v1/examples/{first['id']}")
    assert r.status_code == 200
    assert r.json()["text"] == first["text"]
    missing = client.get("/v1/examples/does-not-exist")
    assert missing.status_code == 404
    assert missing.json()["error_type"] == "not_found"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"text": "x", "k": 0}, "k"),
        ({"text": "x", "k": 51}, "k"),
        ({"text": "x", "lam": 2}, "lam"),
        ({"text": "x", "strategy": "best"}, "strategy"),
        ({"text": ""}, "text"),
        ({"text": "x", "label": "sideways"}, "unknown label"),
        ({"prompt": "p", "response": "r"}, "classifier"),
        ({"prompt": "p"}, "classifier"),
        ({}, "send one of"),
        ({"text": "x", "colour": "red"}, "colour"),
        ({"text": 5}, "text"),
    ],
)
def test_bad_input_is_422_naming_the_field(client: TestClient, body: dict[str, object], field: str) -> None:
    r = client.post("/v1/explain", json=body)
    assert r.status_code == 422, r.text
    err = r.json()
    assert field in err["error"]
    assert err["error_type"] == "invalid_input"
    assert err["request_id"]


def test_malformed_and_oversized_bodies(client: TestClient) -> None:
    r = client.post("/v1/explain", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400  # unparsable: the README's promise (issue 24)
    r = client.post("/v1/explain", json={"text": "x" * 10_000})
    assert r.status_code == 413
    assert r.json()["error_type"] == "payload_too_large"

    def chunks() -> Iterator[bytes]:  # no content-length: streamed
        yield b'{"text": "'
        for _ in range(10):
            yield b"y" * 1000
        yield b'"}'

    r = client.post("/v1/explain", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert client.get("/healthz").status_code == 200  # still serving


@pytest.mark.parametrize(
    ("field", "value"),
    [("k", "5"), ("k", True), ("k", 5.0), ("lam", "0.5"), ("seed", False), ("text", 5), ("strategy", 1), ("ks", ["1"])],
)
def test_types_are_checked_not_coerced(client: TestClient, field: str, value: object) -> None:
    path = "/v1/compare" if field == "ks" else "/v1/explain"
    r = client.post(path, json={"text": "the cat sat", field: value})
    assert r.status_code == 422, (field, value, r.text)
    assert field in r.json()["error"]


def test_unparsable_json_is_400_with_the_line_and_column(client: TestClient) -> None:
    body = b'{"text": "the cat sat",\n "k": 5,}'
    r = client.post("/v1/explain", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["error_type"] == "bad_request"
    assert r.json()["error"] == (
        "the request body is not valid JSON: Expecting property name enclosed in double quotes at line 2, column 9"
    )


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded", "application/xml"])
@pytest.mark.parametrize("path", ["/v1/explain", "/v1/compare", "/v1/jobs"])
def test_a_body_that_is_not_declared_json_is_415(client: TestClient, path: str, content_type: str | None) -> None:
    headers = {"content-type": content_type} if content_type else {}
    r = client.post(path, content=b'{"text": "the cat sat", "k": 2}', headers=headers)
    assert r.status_code == 415, r.text
    assert r.json()["error_type"] == "unsupported_media_type"
    assert "Content-Type: application/json" in r.json()["error"]
    ok = client.post(
        "/v1/explain",
        content=b'{"text": "the cat sat", "k": 2}',
        headers={"content-type": "application/json; charset=utf-8"},
    )
    assert ok.status_code == 200, ok.text


def test_oversized_headers_are_431_and_long_ids_are_not_echoed_in_full(client: TestClient) -> None:
    r = client.get("/v1/index", headers={"X-Padding": "x" * 70_000})
    assert r.status_code == 431, r.text
    assert r.json()["error_type"] == "headers_too_large"
    assert client.get("/v1/index", headers={"X-Padding": "x" * 1000}).status_code == 200
    r = client.get("/v1/examples/" + "e" * 10_000)
    assert r.status_code == 404
    assert len(r.text) < 500
    assert "(10000 characters)" in r.json()["error"]


def test_heavy_requests_run_on_their_own_lane(client: TestClient) -> None:
    """With the model lane busy, compare and a heavy explain (a pool above the default) still run:
    they are on the heavy lane and take the model only through its fair lock."""
    import threading

    release = threading.Event()
    blocked = client.app.state.executor.submit(release.wait, 60)  # type: ignore[attr-defined]
    try:
        compare = client.post("/v1/compare", json={"text": "the cat sat", "k": 2, "ks": [1, 2]})
        assert compare.status_code == 200, compare.text
        heavy = client.post("/v1/explain", json={"text": "the cat sat", "k": 2, "pool_size": 200})
        assert heavy.status_code == 200, heavy.text
        assert not blocked.done()  # the model lane was busy all along
    finally:
        release.set()
    blocked.result(timeout=10)
    assert client.post("/v1/explain", json={"text": "the cat sat", "k": 2}).status_code == 200


def test_a_request_estimated_to_cost_more_than_heavy_runs_on_the_heavy_lane(client: TestClient) -> None:
    """`reconstruct` with the exact solver at k = 18 asks for no large pool and k <= 25, but its estimate
    (exemplar.cost) is above HEAVY_COST_S: it runs on the heavy lane, not behind a busy model lane."""
    import threading

    release = threading.Event()
    blocked = client.app.state.executor.submit(release.wait, 60)  # type: ignore[attr-defined]
    body = {"text": "the cat sat", "k": 18, "strategy": "reconstruct", "solver": "exact", "score_space": "projected"}
    try:
        r = client.post("/v1/explain", json=body)
        assert r.status_code == 200, r.text
        assert float(r.headers["X-Cost-Estimate-S"]) > 2.0
        assert not blocked.done()
    finally:
        release.set()
    blocked.result(timeout=10)


def test_a_request_estimated_above_the_limit_is_413_before_any_model_work(classifier_index: Path) -> None:
    """Issue 24: refused up front, with the estimate, the limit and where to send it instead."""
    settings = ApiSettings(index_dir=classifier_index, max_request_cost_s=0.5, watch_interval_s=0)
    explainer = Explainer.from_index(classifier_index)
    with TestClient(create_app(settings, explainer)) as c:
        runs = []
        featurize = explainer.featurizer.featurize
        explainer.featurizer.featurize = lambda *a, **kw: runs.append(1) or featurize(*a, **kw)  # type: ignore[method-assign]
        for path, body in [
            ("/v1/compare", {"text": "the cat sat", "k": 10, "solver": "exact"}),
            ("/v1/explain", {"text": "the cat sat", "k": 20, "strategy": "reconstruct", "solver": "exact"}),
        ]:
            r = c.post(path, json=body)
            assert r.status_code == 413, r.text
            out = r.json()
            assert out["error_type"] == "cost_limit"
            assert "limit of 0.5 s" in out["error"]
            assert "POST /v1/jobs" in out["error"]
            assert float(r.headers["X-Cost-Estimate-S"]) > 0.5
            assert r.headers["X-Cost-Limit-S"] == "0.5"
        assert runs == []  # refused before the model ran
        cheap = c.post(
            "/v1/explain", json={"text": "the cat sat", "k": 2, "strategy": "topk", "score_space": "projected"}
        )
        assert cheap.status_code == 200, cheap.text
        assert 0 < float(cheap.headers["X-Cost-Estimate-S"]) <= 0.5
        assert runs == [1]
        bad = c.post("/v1/explain", json={"text": "the cat sat", "k": 2, "strategy": "nope"})
        assert bad.status_code == 422  # a bad option is named, not estimated


def test_a_heavy_request_past_its_deadline_is_503_with_retry_after(classifier_index: Path) -> None:
    settings = ApiSettings(index_dir=classifier_index, request_timeout_s=1e-9, max_request_cost_s=0)
    with TestClient(create_app(settings, Explainer.from_index(classifier_index))) as c:
        r = c.post("/v1/compare", json={"text": "the cat sat", "k": 2, "ks": [1, 2]})
        assert r.status_code == 503, r.text
        assert r.json()["error_type"] == "deadline_exceeded"
        assert "batch job" in r.json()["error"]
        assert r.headers["Retry-After"] == "1"
        assert c.post("/v1/explain", json={"text": "the cat sat", "k": 2}).status_code == 200  # light: no deadline


def test_health_and_docs(client: TestClient) -> None:
    assert client.get("/healthz").json()["status"] == "ok"
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready"
    assert ready["details"]["n_examples"] == 36
    assert client.get("/openapi.json").status_code == 200
    assert client.get("/docs").status_code == 200
    assert client.get("/v1/index").json()["n_examples"] == 36


@pytest.mark.parametrize(
    "body",
    [
        {"text": "stocks fell", "estimator": "datainf", "strategy": "divine", "k": 3},
        {"text": "stocks fell", "estimator": "bm25", "strategy": "aide", "k": 3},
        {"text": "stocks fell", "estimator": "grad_cos", "ordering": "least_influential", "strategy": "topk", "k": 3},
        {"text": "stocks fell", "strategy": "reconstruct", "solver": "exact", "k": 3, "pool_size": 20},
    ],
)
def test_estimators_strategies_and_solvers_over_http(client: TestClient, body: dict[str, object]) -> None:
    r = client.post("/v1/explain", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert len(out["examples"]) == 3
    assert out["options"]["estimator"] == body.get("estimator", "grad_dot")
    assert out["options"]["solver"] == body.get("solver", "paper")


def test_auto_says_why(client: TestClient) -> None:
    out = client.post("/v1/explain", json={"text": "stocks fell", "strategy": "auto", "k": 2}).json()
    assert out["strategy"] in ("topk", "balanced", "reconstruct")
    assert out["reason"].startswith(out["strategy"])


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"text": "x", "estimator": "bm25", "ordering": "most_helpful"}, "similarity without sign"),
        ({"text": "x", "estimator": "tracin"}, "checkpoints"),
        ({"text": "a sentence nobody trained on", "strategy": "self"}, "not a training example"),
        ({"text": "x", "pool_size": 0}, "pool_size"),
        ({"text": "x", "solver": "magic"}, "solver"),
    ],
)
def test_option_errors_are_422(client: TestClient, body: dict[str, object], message: str) -> None:
    r = client.post("/v1/explain", json=body)
    assert r.status_code == 422, r.text
    assert message in r.json()["error"]


def test_reload_serves_an_appended_index_and_needs_the_admin_key(tmp_path: Path, classifier_index: Path) -> None:
    import hashlib
    import shutil

    from exemplar.build import append_index
    from exemplar.tasks import Example

    index = tmp_path / "index"
    shutil.copytree(classifier_index, index)
    settings = ApiSettings(index_dir=index, admin_key_sha256=hashlib.sha256(b"s3cret").hexdigest(), watch_interval_s=0)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        before = c.get("/v1/index").json()
        assert c.post("/v1/admin/reload").status_code == 401
        wrong = c.post("/v1/admin/reload", headers={"X-Admin-Key": "nope"})
        assert wrong.status_code == 401
        assert "X-Admin-Key" in wrong.json()["error"]
        append_index(index, [Example(id="new-1", text="a brand new example", label=before["labels"][0])])
        r = c.post("/v1/admin/reload", headers={"X-Admin-Key": "s3cret"})
        assert r.status_code == 200, r.text
        assert r.json()["previous"]["n_examples"] == before["n_examples"]
        assert r.json()["index"]["n_examples"] == before["n_examples"] + 1
        assert c.get("/v1/index").json()["n_examples"] == before["n_examples"] + 1
        assert c.get("/v1/examples/new-1").status_code == 200
        assert c.post("/v1/explain", json={"text": "a brand new example", "k": 3}).status_code == 200
        shutil.rmtree(index)  # a broken directory: the old version stays served
        broken = c.post("/v1/admin/reload", headers={"X-Admin-Key": "s3cret"})
        assert 400 <= broken.status_code < 500, broken.text
        assert c.post("/v1/explain", json={"text": "still served", "k": 3}).status_code == 200


def test_a_reload_shares_the_model_and_frees_the_old_version(tmp_path: Path, classifier_index: Path) -> None:
    """Issue 24: memory after a hot swap. A version over the same model gets the loaded model (not a
    second copy), and nothing keeps the old version's store, estimators or caches alive."""
    import gc
    import shutil
    import weakref

    from exemplar.build import append_index
    from exemplar.tasks import Example

    index = tmp_path / "index"
    shutil.copytree(classifier_index, index)
    with TestClient(create_app(ApiSettings(index_dir=index, watch_interval_s=0))) as c:
        assert c.post("/v1/explain", json={"text": "warm the caches", "k": 3}).status_code == 200
        old = c.app.state.explainer  # type: ignore[attr-defined]
        old_store, model = weakref.ref(old.store), old.featurizer.model
        label, before = old.store.manifest.labels[0], old.store.n
        gone = weakref.ref(old)
        del old
        append_index(index, [Example(id="new-1", text="a brand new example", label=label)])
        assert c.post("/v1/admin/reload").status_code == 200
        fresh = c.app.state.explainer  # type: ignore[attr-defined]
        assert fresh.store.n == before + 1
        assert fresh.featurizer.model is model  # shared, not loaded again
        assert c.post("/v1/explain", json={"text": "a brand new example", "k": 3}).status_code == 200
        gc.collect()
        assert gone() is None, gc.get_referrers(gone())
        assert old_store() is None


def test_metrics_count_requests_by_route_and_stage(client: TestClient) -> None:
    assert client.post("/v1/explain", json={"text": "the cat sat", "k": 2}).status_code == 200
    assert client.get("/v1/examples/does-not-exist").status_code == 404
    text = client.get("/metrics").text
    assert 'exemplar_requests_total{method="POST",route="/v1/explain",status="200"}' in text
    assert 'exemplar_requests_total{method="GET",route="/v1/examples/{example_id:path}",status="404"}' in text
    assert 'exemplar_stage_seconds_count{stage="gradient"}' in text
    assert "exemplar_cache_up 0.0" in text  # no Redis configured


def test_json_logs_carry_the_request_id(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    import json
    import logging

    from app.observability import JsonFormatter

    with caplog.at_level(logging.INFO, logger="exemplar.api"):
        r = client.get("/v1/examples/nope", headers={"X-Request-ID": "trace-123"})
    assert r.json()["request_id"] == "trace-123"
    lines = [json.loads(JsonFormatter().format(rec)) for rec in caplog.records if rec.getMessage() == "request"]
    assert any(line["request_id"] == "trace-123" and line["status"] == 404 for line in lines)


def test_committed_openapi_matches_the_live_spec() -> None:
    import json

    from app.openapi import spec

    committed = json.loads((Path(__file__).resolve().parent.parent / "docs" / "openapi.json").read_text())
    assert committed == json.loads(json.dumps(spec())), (
        "the API changed: regenerate with `.venv/bin/python -m app.openapi > docs/openapi.json`"
    )


@pytest.mark.parametrize("truncate", [False, True])
def test_over_long_queries_are_refused_unless_truncation_is_on(classifier_index: Path, truncate: bool) -> None:
    settings = ApiSettings(index_dir=classifier_index, truncate_queries=truncate)
    long_text = " ".join(["word"] * 200)  # the test index has max_length 32
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        r = c.post("/v1/explain", json={"text": long_text, "k": 2})
        if truncate:
            assert r.status_code == 200, r.text
            assert r.json()["prediction"]["truncated"] is True
        else:
            assert r.status_code == 422
            assert "max_length of 32 tokens" in r.json()["error"]
        compared = c.post("/v1/compare", json={"text": long_text, "k": 2})
        assert compared.status_code == (200 if truncate else 422), compared.text
        assert c.post("/v1/explain", json={"text": "short and fine", "k": 2}).status_code == 200


def test_max_k_setting_is_the_limit_both_ways(classifier_index: Path) -> None:
    """EXEMPLAR_MAX_K (ApiSettings.max_k) limits k, above and below the default 50: the schema sets no cap."""
    for max_k, k, ok in ((3, 4, False), (60, 51, True), (60, 61, False)):
        settings = ApiSettings(index_dir=classifier_index, max_k=max_k)
        with TestClient(create_app(settings), raise_server_exceptions=False) as c:
            assert c.get("/v1/index").json()["max_k"] == max_k
            n = c.get("/v1/index").json()["n_examples"]
            r = c.post("/v1/explain", json={"text": "the cat sat", "k": min(k, n) if ok else k, "strategy": "topk"})
            if ok:
                assert r.status_code == 200, r.text
                assert len(r.json()["examples"]) == min(k, n)
            else:
                assert r.status_code == 422, r.text
                assert f"k must be between 1 and {max_k}" in r.json()["error"]


def test_a_bad_option_costs_no_model_work(classifier_index: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    explainer = Explainer.from_index(classifier_index)

    def no_model_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("featurised before the options were checked")

    monkeypatch.setattr(explainer, "prepare", no_model_work)
    monkeypatch.setattr(explainer, "_featurize_checked", no_model_work)
    query = Example(text="the cat sat")
    with pytest.raises(InvalidInputError, match="k must be between 1 and 50"):
        explainer.explain(query, k=51)
    with pytest.raises(InvalidInputError, match="lam"):
        explainer.explain(query, strategy="balanced", lam=2.0)
    (only,) = explainer.explain_many([(query, ExplainOptions(k=51))])
    assert isinstance(only, InvalidInputError)


def test_readyz_is_503_until_the_index_is_loaded(client: TestClient) -> None:
    app = client.app
    served = app.state.explainer  # type: ignore[attr-defined]
    app.state.explainer = None  # type: ignore[attr-defined]
    try:
        loading = client.get("/readyz")
        assert loading.status_code == 503
        assert loading.json()["status"] == "loading"
        assert loading.headers["Retry-After"] == "5"
    finally:
        app.state.explainer = served  # type: ignore[attr-defined]
    assert client.get("/readyz").status_code == 200


def test_swagger_ui_and_redoc_load_only_packaged_assets(client: TestClient) -> None:
    import re

    for page in ("/docs", "/redoc"):
        html = client.get(page).text
        urls = re.findall(r"""(?:src|href)=["']([^"']+)""", html) + re.findall(r"""url: ?["']([^"']+)""", html)
        assert urls, page
        for url in urls:
            assert url.startswith("/"), f"{page} loads {url} from elsewhere"
            assert client.get(url).status_code == 200, url
    assert "fonts.googleapis" not in client.get("/redoc").text


def test_the_openapi_document_declares_the_api_key(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    schemes = spec["components"]["securitySchemes"]
    assert schemes["bearer"] == {"type": "http", "scheme": "bearer", "description": schemes["bearer"]["description"]}
    assert (schemes["apiKey"]["in"], schemes["apiKey"]["name"]) == ("header", "X-API-Key")
    assert (schemes["adminKey"]["in"], schemes["adminKey"]["name"]) == ("header", "X-Admin-Key")
    assert spec["paths"]["/v1/explain"]["post"]["security"] == [{"bearer": []}, {"apiKey": []}]
    assert spec["paths"]["/v1/admin/reload"]["post"]["security"] == [{"adminKey": []}]
    assert "security" not in spec["paths"]["/readyz"]["get"]  # probes stay open


def test_require_keys_refuses_to_start_without_them(classifier_index: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib

    from app.main import main

    monkeypatch.setenv("EXEMPLAR_REQUIRE_KEYS", "true")
    monkeypatch.setenv("EXEMPLAR_API_KEYS", "")  # as docker-compose.yml passes an unset one: ignored
    with pytest.raises(SystemExit) as refused:
        main(["--index", str(classifier_index), "--port", "1"])
    assert refused.value.code == 2
    monkeypatch.setenv("EXEMPLAR_API_KEYS", '{"me": "' + hashlib.sha256(b"k").hexdigest() + '"}')
    with pytest.raises(SystemExit):
        main(["--index", str(classifier_index), "--port", "1"])  # still no admin key
    from app.settings import missing_keys

    assert missing_keys(ApiSettings(require_keys=True, api_keys={"me": "ab"})) == (
        'EXEMPLAR_REQUIRE_KEYS is set but EXEMPLAR_ADMIN_KEY_SHA256 is not: set EXEMPLAR_API_KEYS=\'{"name": '
        '"<sha256 hex of the key>"}\' and EXEMPLAR_ADMIN_KEY_SHA256=<sha256 hex of the admin key> (README: Deploy '
        "with docker compose)"
    )
    assert missing_keys(ApiSettings(require_keys=True, api_keys={"me": "ab"}, admin_key_sha256="cd")) is None
    assert missing_keys(ApiSettings(require_keys=False)) is None
    from exemplar.errors import ExemplarError

    with pytest.raises(ExemplarError, match="EXEMPLAR_API_KEYS"):  # however the app is started
        create_app(ApiSettings(require_keys=True, index_dir=classifier_index))


def test_check_probes_readyz_on_the_port(classifier_index: Path, tmp_path: Path) -> None:
    """`exemplar-api --check`, the compose healthcheck: 0 while a ready server listens on $EXEMPLAR_PORT, else 1."""
    import subprocess

    from app.process import BIN, ENV, running_api

    def check(port: str) -> int:
        return subprocess.run(
            [BIN / "exemplar-api", "--check"], env={**ENV, "EXEMPLAR_PORT": port}, check=False
        ).returncode

    with running_api(classifier_index, tmp_path / "api.log") as url:
        port = url.rsplit(":", 1)[1]
        assert check(port) == 0
    assert check(port) == 1  # nothing listens any more


def test_the_api_serves_an_index_whose_model_moved(
    tmp_path: Path, classifier_dir: Path, classifier_index: Path
) -> None:
    import shutil

    from tests.conftest import copy_without_its_model

    index = copy_without_its_model(classifier_index, tmp_path / "index")
    moved = shutil.copytree(classifier_dir, tmp_path / "model")
    settings = ApiSettings(index_dir=index, model_dir=moved, watch_interval_s=0)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        assert c.get("/readyz").status_code == 200
        assert c.post("/v1/explain", json={"text": "stocks fell", "k": 2}).status_code == 200
