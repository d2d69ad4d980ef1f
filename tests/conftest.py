"""Shared fixtures: tiny random models saved to disk and indexes built from them."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from exemplar.build import build_index
from exemplar.gradients import ProjectionConfig
from exemplar.jsonl import read_examples_jsonl
from exemplar.models import load_model
from tests.tiny_models import CORPUS, LABELS, save_causal_lm, save_classifier


def write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def index_from_jsonl(
    data: Path, out: Path, model_dir: Path, task: str, params: str, max_length: int, labels: list[str] | None = None
) -> Path:
    """An index at `out` of the training rows in `data` (every row valid), built with the model at
    `model_dir` over `params` at 16 dims per layer, seed 0."""
    examples, errors = read_examples_jsonl(data, task, labels)
    assert not errors
    loaded = load_model(model_dir, task)
    build_index(loaded, examples, out, ProjectionConfig(params=params, proj_dim=16, seed=0), max_length=max_length)
    return out


def copy_without_its_model(index: Path, out: Path) -> Path:
    """A copy of `index` at `out` whose manifest names a model directory that does not exist
    (`out`'s sibling `gone`): the index of a model that moved."""
    shutil.copytree(index, out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["model_dir"] = str(out.parent / "gone")
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def classification_rows() -> list[dict[str, object]]:
    return [
        {"id": f"ex{i}", "text": f"{t} {CORPUS[(i * 5) % len(CORPUS)]}", "label": LABELS[i % 3]}
        for i, t in enumerate(CORPUS * 3)
    ]


def causal_rows() -> list[dict[str, object]]:
    return [{"id": f"c{i}", "prompt": t, "response": CORPUS[(i + 1) % len(CORPUS)]} for i, t in enumerate(CORPUS * 2)]


@pytest.fixture(scope="session")
def classifier_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_classifier(tmp_path_factory.mktemp("clf") / "model")


@pytest.fixture(scope="session")
def causal_adapter_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_causal_lm(tmp_path_factory.mktemp("lm"))


@pytest.fixture(scope="session")
def classification_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("data") / "train.jsonl", classification_rows())


@pytest.fixture(scope="session")
def causal_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("data") / "chat.jsonl", causal_rows())


@pytest.fixture(scope="session")
def classifier_index(tmp_path_factory: pytest.TempPathFactory, classifier_dir: Path, classification_data: Path) -> Path:
    out = tmp_path_factory.mktemp("idx") / "clf"
    return index_from_jsonl(classification_data, out, classifier_dir, "classification", "linear", 32, LABELS)


@pytest.fixture(scope="session")
def causal_index(tmp_path_factory: pytest.TempPathFactory, causal_adapter_dir: Path, causal_data: Path) -> Path:
    out = tmp_path_factory.mktemp("idx") / "lm"
    return index_from_jsonl(causal_data, out, causal_adapter_dir, "causal-lm", "lora", 64)


@pytest.fixture
def redis() -> Iterator[Redis]:
    """The Redis that integration tests need on 127.0.0.1:6379 (database 15; `.ci/run` starts one)."""
    connection = Redis.from_url("redis://127.0.0.1:6379/15")
    try:
        connection.ping()
    except RedisConnectionError:
        pytest.fail("integration tests need Redis on 127.0.0.1:6379 (.ci/run starts one)")
    yield connection
    connection.close()
