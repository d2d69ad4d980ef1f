"""Training data as Parquet or a `datasets` directory, read like JSONL (same checks, same errors)."""

from __future__ import annotations

from pathlib import Path

import datasets
import pytest

from exemplar.errors import InvalidInputError
from exemplar.jsonl import read_examples_jsonl
from tests.conftest import classification_rows, write_jsonl
from tests.tiny_models import LABELS

CHAT = [{"role": "user", "content": "is this spam"}, {"role": "assistant", "content": "spam"}]


def test_parquet_and_a_saved_dataset_give_what_jsonl_gives(tmp_path: Path) -> None:
    rows = [{**r, "text_pair": "a second text" if i % 2 else None} for i, r in enumerate(classification_rows())]
    expected, errors = read_examples_jsonl(
        write_jsonl(tmp_path / "train.jsonl", [{k: v for k, v in r.items() if v is not None} for r in rows]),
        "classification",
        LABELS,
    )
    assert not errors
    dataset = datasets.Dataset.from_list(rows)  # a null text_pair is an absent one
    dataset.to_parquet(str(tmp_path / "train.parquet"))
    dataset.save_to_disk(str(tmp_path / "saved"))
    for source in (tmp_path / "train.parquet", tmp_path / "saved"):
        examples, errors = read_examples_jsonl(source, "classification", LABELS)
        assert not errors
        assert [(e.id, e.text, e.text_pair, e.label) for e in examples] == [
            (e.id, e.text, e.text_pair, e.label) for e in expected
        ]
        assert examples[0].source == f"{source.name}:1"


def test_bad_rows_and_conversations_in_parquet(tmp_path: Path) -> None:
    rows = [
        {"id": "a", "messages": CHAT, "prompt": None, "response": None},
        {"id": "b", "messages": None, "prompt": "p", "response": "r"},
        {"id": "c", "messages": None, "prompt": "p", "response": None},
        {"id": "a", "messages": None, "prompt": "p", "response": "r"},
    ]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "chat.parquet"))
    examples, errors = read_examples_jsonl(tmp_path / "chat.parquet", "causal-lm")
    assert [e.id for e in examples] == ["a", "b"]
    assert examples[0].messages == CHAT
    assert [(e.line, e.message) for e in errors] == [
        (3, "field 'response' must be a non-empty string"),
        (4, "duplicate id 'a' (first on line 1)"),
    ]


def test_a_dataset_dict_or_a_broken_file_is_refused_saying_what_to_pass(tmp_path: Path) -> None:
    splits = datasets.DatasetDict({"train": datasets.Dataset.from_list(classification_rows())})
    splits.save_to_disk(str(tmp_path / "splits"))
    with pytest.raises(InvalidInputError, match=r"several splits; pass one of them: .*splits/train"):
        read_examples_jsonl(tmp_path / "splits", "classification", LABELS)
    (tmp_path / "broken.parquet").write_bytes(b"not parquet")
    with pytest.raises(InvalidInputError, match="not a readable Parquet file"):
        read_examples_jsonl(tmp_path / "broken.parquet", "classification", LABELS)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInputError, match="save_to_disk"):
        read_examples_jsonl(tmp_path / "empty", "classification", LABELS)
