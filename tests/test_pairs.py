"""Sentence-pair classification (`text` + `text_pair`): joined as the tokenizer joins pairs, with
segment ids; the fast featuriser against the oracle; training rows, queries and storage."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import ApiSettings
from exemplar.gradients import KroneckerFeaturizer, ProjectionConfig, ReferenceFeaturizer
from exemplar.jsonl import read_examples_jsonl
from exemplar.store import FaissGradientStore
from exemplar.tasks import ClassificationTask, Example
from tests.conftest import classification_rows, index_from_jsonl, write_jsonl
from tests.tiny_models import CORPUS, LABELS, tiny_classifier, tiny_tokenizer

LABEL_IDS = {label: i for i, label in enumerate(LABELS)}


def test_a_pair_is_joined_with_separators_and_segment_ids() -> None:
    task = ClassificationTask(tiny_tokenizer(), LABEL_IDS, max_length=12)
    pair = task.encode(Example(text="the cat sat", text_pair="a dog barked", label="neutral"))
    single = task.encode(Example(text="the cat sat", label="neutral"))
    assert pair.input_ids[: len(single.input_ids)] == single.input_ids  # [CLS] A [SEP] first
    assert pair.token_type_ids is not None
    assert set(pair.token_type_ids[: len(single.input_ids)]) == {0}
    assert set(pair.token_type_ids[len(single.input_ids) :]) == {1}
    assert single.token_type_ids is None  # single texts as before
    long = task.encode(Example(text=" ".join(CORPUS[:3]), text_pair="a dog barked"))
    assert long.truncated
    assert len(long.input_ids) == 12
    assert 1 in (long.token_type_ids or [])  # the shorter second text keeps its tokens


def test_pairs_match_the_reference_featuriser_and_differ_from_one_joined_text() -> None:
    task = ClassificationTask(tiny_tokenizer(), LABEL_IDS)
    examples = [Example(text=CORPUS[i], text_pair=CORPUS[i + 1], label=LABELS[i % 3]) for i in range(0, 8, 2)] + [
        Example(text="the dog", label="positive")
    ]  # singles and pairs in one batch
    config = ProjectionConfig(params="linear", proj_dim=16, seed=3)
    fast = KroneckerFeaturizer(tiny_classifier(), task, config, batch_size=8).featurize(examples)
    slow = ReferenceFeaturizer(tiny_classifier(), task, config).featurize(examples)
    np.testing.assert_allclose(fast.vectors, slow.vectors, rtol=2e-4, atol=1e-6)
    joined = [Example(text=f"{e.text} {e.text_pair}", label=e.label) for e in examples[:4]]
    as_one = KroneckerFeaturizer(tiny_classifier(), task, config).featurize(joined)
    assert not np.allclose(as_one.vectors, fast.vectors[:4], rtol=1e-3)  # segments are part of the input


@pytest.fixture(scope="module")
def pair_index(tmp_path_factory: pytest.TempPathFactory, classifier_dir: Path) -> Path:
    tmp = tmp_path_factory.mktemp("pairs")
    rows = [
        *classification_rows(),
        {"id": "pair-1", "text": "is this spam", "text_pair": "free prize call now", "label": "negative"},
        {"id": "pair-2", "text": "is this spam", "text_pair": "see you at lunch", "label": "positive"},
    ]
    data = write_jsonl(tmp / "train.jsonl", rows)
    return index_from_jsonl(data, tmp / "index", classifier_dir, "classification", "linear", 32, LABELS)


@pytest.fixture(scope="module")
def client(pair_index: Path) -> Iterator[TestClient]:
    with TestClient(create_app(ApiSettings(index_dir=pair_index, watch_interval_s=0))) as c:
        yield c


def test_pairs_in_training_data_queries_and_lookups(client: TestClient, pair_index: Path, tmp_path: Path) -> None:
    r = client.post("/v1/explain", json={"text": "is this spam", "text_pair": "free prize call now", "k": 3})
    assert r.status_code == 200, r.text
    assert client.get("/v1/examples/pair-2").json()["text_pair"] == "see you at lunch"
    assert "text_pair" not in client.get("/v1/examples/ex0").json()
    lonely = client.post("/v1/explain", json={"prompt": "p", "text_pair": "x"})
    assert lonely.status_code == 422
    assert "'text_pair' goes with 'text'" in lonely.json()["error"]
    store = FaissGradientStore(pair_index)
    pair_2 = store.find_row(Example(text="is this spam", text_pair="see you at lunch"))
    assert pair_2 is not None
    assert store.examples_at([pair_2])[0].id == "pair-2"
    assert store.find_row(Example(text="is this spam")) is None  # the first text alone is another input
    bad = [{"text": "x", "text_pair": "", "label": "neutral"}, {"prompt": "p", "response": "r", "text_pair": "x"}]
    _, errors = read_examples_jsonl(write_jsonl(tmp_path / "bad.jsonl", bad), "classification", LABELS)
    assert [e.line for e in errors] == [1, 2]
    _, errors = read_examples_jsonl(write_jsonl(tmp_path / "bad.jsonl", bad[1:]), "causal-lm")
    assert "text_pair" in errors[0].message
    assert json.loads((pair_index / "manifest.json").read_text())["n_examples"] == len(classification_rows()) + 2
