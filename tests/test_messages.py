"""Causal-LM conversations (`messages`): rendered with the chat template, the loss on the final
assistant turn; in training data, queries over HTTP, storage and old indexes without them."""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import ApiSettings
from exemplar.errors import InvalidInputError
from exemplar.jsonl import read_examples_jsonl
from exemplar.models import load_model
from exemplar.store import FaissGradientStore
from exemplar.tasks import IGNORE_INDEX, CausalLMTask, Example
from tests.conftest import causal_rows, index_from_jsonl, write_jsonl

CHAT = [
    {"role": "system", "content": "you sort messages"},
    {"role": "user", "content": "is this message spam or ham"},
    {"role": "assistant", "content": "spam"},
    {"role": "user", "content": "and this one: see you at lunch tomorrow"},
    {"role": "assistant", "content": "ham"},
]


def test_a_one_turn_conversation_is_encoded_as_prompt_and_response(causal_adapter_dir: Path) -> None:
    task = CausalLMTask(load_model(causal_adapter_dir, "causal-lm").tokenizer, 64)
    as_pair = task.encode(Example(prompt="is this message spam or ham", response="spam"))
    as_chat = task.encode(Example(messages=CHAT[1:3]))
    assert as_chat == as_pair


def test_the_loss_covers_only_the_final_assistant_turn(causal_adapter_dir: Path) -> None:
    task = CausalLMTask(load_model(causal_adapter_dir, "causal-lm").tokenizer, 256)
    encoded = task.encode(Example(messages=CHAT))
    targets = [t for t in encoded.target if t != IGNORE_INDEX]  # type: ignore[union-attr]
    _, last_turn = task.conversation_ids(CHAT)
    assert targets == last_turn
    assert encoded.input_ids[-len(last_turn) :] == last_turn
    assert len(encoded.input_ids) > len(task.encode(Example(messages=CHAT[1:3])).input_ids)  # the history counts
    with pytest.raises(InvalidInputError, match="last of 'messages' must be the assistant"):
        task.encode(Example(messages=CHAT[:4]))


def test_training_rows_may_be_conversations(tmp_path: Path) -> None:
    rows = [
        {"id": "a", "messages": CHAT},
        {"id": "b", "prompt": "p", "response": "r"},
        {"id": "c", "messages": CHAT[:2]},
        {"id": "d", "messages": CHAT, "prompt": "p"},
        {"id": "e", "messages": [{"role": "robot", "content": "x"}, CHAT[2]]},
        {"id": "f", "messages": CHAT, "meta": "oops"},
    ]
    examples, errors = read_examples_jsonl(write_jsonl(tmp_path / "chat.jsonl", rows), "causal-lm")
    assert [e.id for e in examples] == ["a", "b"]
    assert examples[0].messages == CHAT
    assert [(e.line, e.message.split(";")[0]) for e in errors] == [
        (3, "the last of 'messages' must be the assistant's turn: it is the response explained"),
        (4, "a row has either 'messages' or 'prompt' and 'response', not both"),
        (5, "messages[0].role must be one of system, user, assistant"),
        (6, "field 'meta' must be an object"),
    ]


@pytest.fixture(scope="module")
def chat_index(tmp_path_factory: pytest.TempPathFactory, causal_adapter_dir: Path) -> Path:
    tmp = tmp_path_factory.mktemp("chat")
    rows = [*causal_rows(), {"id": "conv-1", "messages": CHAT}, {"id": "conv-2", "messages": CHAT[1:3]}]
    return index_from_jsonl(
        write_jsonl(tmp / "train.jsonl", rows), tmp / "index", causal_adapter_dir, "causal-lm", "lora", 128
    )


@pytest.fixture(scope="module")
def client(chat_index: Path) -> Iterator[TestClient]:
    with TestClient(create_app(ApiSettings(index_dir=chat_index, watch_interval_s=0))) as c:
        yield c


def test_conversations_are_explained_and_returned_over_http(client: TestClient, chat_index: Path) -> None:
    r = client.post("/v1/explain", json={"messages": CHAT, "k": 3, "strategy": "topk"})
    assert r.status_code == 200, r.text
    stored = client.get("/v1/examples/conv-1").json()
    assert stored["messages"] == CHAT
    assert "prompt" not in stored
    same = client.post("/v1/explain", json={"messages": CHAT[1:3], "k": 3}).json()
    pair = client.post("/v1/explain", json={"prompt": CHAT[1]["content"], "response": "spam", "k": 3}).json()
    assert [e["id"] for e in same["examples"]] == [e["id"] for e in pair["examples"]]
    store = FaissGradientStore(chat_index)
    row = store.find_row(Example(messages=CHAT))  # the "self" strategy finds a training conversation
    assert row is not None
    assert store.examples_at([row])[0].id == "conv-1"
    assert store.find_row(Example(messages=[*CHAT[:3], {"role": "assistant", "content": "other"}])) is None
    bad = client.post("/v1/compare", json={"messages": CHAT[:4]})  # ends with the user's turn
    assert bad.status_code == 422
    assert "only POST /v1/explain has the model answer" in bad.json()["error"]
    system_last = client.post("/v1/explain", json={"messages": [*CHAT[:2], {"role": "system", "content": "x"}]})
    assert system_last.status_code == 422
    both = client.post("/v1/explain", json={"messages": CHAT, "prompt": "x"})
    assert both.status_code == 422


def test_an_index_from_before_conversations_still_opens(tmp_path: Path, chat_index: Path) -> None:
    old = shutil.copytree(chat_index, tmp_path / "old")
    con = sqlite3.connect(old / "examples.sqlite")
    con.execute("DELETE FROM examples WHERE messages IS NOT NULL")
    con.execute("ALTER TABLE examples DROP COLUMN messages")
    con.commit()
    con.close()
    store = FaissGradientStore(old)
    (first,) = store.examples_at([0])
    assert first.messages is None
    assert first.prompt is not None
    assert json.loads(json.dumps(first.meta)) == first.meta


def test_a_conversation_ending_with_the_user_is_answered_and_the_answer_explained(client: TestClient) -> None:
    r = client.post("/v1/explain", json={"messages": CHAT[:4], "k": 3, "max_new_tokens": 8})
    assert r.status_code == 200, r.text
    answer = r.json()["generated_response"]
    assert answer
    explained = [*CHAT[:4], {"role": "assistant", "content": answer}]
    same = client.post("/v1/explain", json={"messages": explained, "k": 3}).json()
    assert same["generated_response"] is None
    assert [e["id"] for e in same["examples"]] == [e["id"] for e in r.json()["examples"]]
    assert same["score_db"] == pytest.approx(r.json()["score_db"])
