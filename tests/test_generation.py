"""Explain what the model says: a causal-LM index generates the response (greedy) when a request
sends only a prompt, and explains exactly that response."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import ApiSettings
from exemplar.errors import InvalidInputError
from exemplar.explain import Explainer
from exemplar.generation import generate_response

PROMPT = "is this message spam or ham"


@pytest.fixture(scope="module")
def explainer(causal_index: Path) -> Explainer:
    return Explainer.from_index(causal_index)


@pytest.fixture(scope="module")
def client(causal_index: Path, explainer: Explainer) -> Iterator[TestClient]:
    settings = ApiSettings(index_dir=causal_index, max_new_tokens=16, watch_interval_s=0)
    with TestClient(create_app(settings, explainer), raise_server_exceptions=False) as c:
        yield c


def test_generation_is_greedy_bounded_and_decoded(explainer: Explainer) -> None:
    first = generate_response(explainer, PROMPT, 8)
    assert first
    assert first == generate_response(explainer, PROMPT, 8)  # greedy: the same every time
    tokenizer = explainer.featurizer.task.tokenizer
    assert len(tokenizer(first, add_special_tokens=False)["input_ids"]) <= 8 + 1  # re-tokenising may split one
    with pytest.raises(InvalidInputError, match="between 1 and 512"):
        generate_response(explainer, PROMPT, 0)
    with pytest.raises(InvalidInputError, match="non-empty"):
        generate_response(explainer, "   ", 8)


def test_explain_without_a_response_explains_what_the_model_generated(client: TestClient) -> None:
    r = client.post("/v1/explain", json={"prompt": PROMPT, "k": 3, "max_new_tokens": 8})
    assert r.status_code == 200, r.text
    body = r.json()
    generated = body["generated_response"]
    assert isinstance(generated, str)
    assert generated
    assert len(body["examples"]) == 3
    same = client.post("/v1/explain", json={"prompt": PROMPT, "response": generated, "k": 3}).json()
    assert same["generated_response"] is None  # a response was sent: nothing generated
    assert [e["id"] for e in same["examples"]] == [e["id"] for e in body["examples"]]
    assert same["score_db"] == pytest.approx(body["score_db"])


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/v1/explain", {"prompt": PROMPT, "max_new_tokens": 17}, "at most 16 on this server"),
        ("/v1/explain", {"response": "spam"}, "'response' goes with 'prompt'"),
        ("/v1/compare", {"prompt": PROMPT}, "only POST /v1/explain generates one"),
        ("/v1/jobs", {"queries": [{"prompt": PROMPT}]}, "only POST /v1/explain generates one"),
    ],
)
def test_generation_errors_are_422_saying_what_to_send(
    client: TestClient, path: str, body: dict[str, object], message: str
) -> None:
    r = client.post(path, json=body)
    assert r.status_code == 422, r.text
    assert message in r.json()["error"]


def test_max_new_tokens_is_refused_where_nothing_is_generated(classifier_index: Path) -> None:
    with TestClient(create_app(ApiSettings(index_dir=classifier_index, watch_interval_s=0))) as c:
        r = c.post("/v1/explain", json={"text": "stocks fell", "max_new_tokens": 8})
    assert r.status_code == 422
    assert "causal-LM request without a 'response'" in r.json()["error"]


def test_a_long_prompt_leaves_room_for_the_answer_and_its_end_tokens(client: TestClient, explainer: Explainer) -> None:
    task = explainer.featurizer.task
    words = " ".join(["the cat sat on the mat"] * 20).split()
    prompt = " ".join(w for i, w in enumerate(words) if len(task.prompt_ids(" ".join(words[: i + 1]))) < 60)
    assert 55 <= len(task.prompt_ids(prompt)) < 60  # of the index's 64 tokens
    r = client.post("/v1/explain", json={"prompt": prompt, "k": 2, "max_new_tokens": 16})
    assert r.status_code == 200, r.text
    generated = r.json()["generated_response"]
    prompt_ids, response_ids = task.split_ids(prompt, generated)
    assert len(prompt_ids) + len(response_ids) <= 64  # trimmed to fit with its end tokens
    again = client.post("/v1/explain", json={"prompt": prompt, "response": generated, "k": 2})
    assert again.status_code == 200, again.text
