"""Gradient store: FAISS against brute force, manifest checks, atomic publication."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from exemplar.errors import IndexIncompatibleError, InvalidInputError, NotFoundError
from exemplar.explain import Explainer
from exemplar.index import write_index
from exemplar.jsonl import read_examples_jsonl
from exemplar.store import FaissGradientStore, Manifest
from exemplar.tasks import Example
from tests.conftest import copy_without_its_model, write_jsonl
from tests.tiny_models import LABELS, save_classifier


def _manifest(n: int, d: int) -> Manifest:
    return Manifest(
        task="classification",
        model_dir="/m",
        adapter_dir=None,
        model_checksum="abc",
        params="linear",
        layer_names=["a"],
        proj_dim=d,
        seed=0,
        dims=d,
        n_examples=n,
        dataset_checksum="x",
        max_length=8,
        labels=LABELS,
    )


def test_search_matches_brute_force(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((200, 16)).astype(np.float32)
    examples = [Example(id=f"e{i}", text=f"t{i}", label="neutral") for i in range(200)]
    store = FaissGradientStore(write_index(tmp_path / "idx", _manifest(200, 16), vectors, examples))
    query = rng.standard_normal(16).astype(np.float32)
    scores, rows = store.search(query, 10)
    brute = vectors @ query
    np.testing.assert_array_equal(rows, np.argsort(-brute)[:10])
    np.testing.assert_allclose(scores, brute[rows], rtol=1e-5)
    assert store.examples_at([int(r) for r in rows[:3]])[0].id == f"e{rows[0]}"
    assert store.example_by_id("e7").text == "t7"
    with pytest.raises(NotFoundError, match="no training example"):
        store.example_by_id("nope")


def test_write_refuses_bad_inputs_and_leaves_nothing_behind(tmp_path: Path) -> None:
    examples = [Example(id="a", text="t", label="neutral"), Example(id="a", text="u", label="neutral")]
    with pytest.raises(InvalidInputError, match="unique"):
        write_index(tmp_path / "idx", _manifest(2, 4), np.ones((2, 4)), examples)
    with pytest.raises(InvalidInputError, match="not finite"):
        write_index(tmp_path / "idx", _manifest(2, 4), np.full((2, 4), np.nan), examples)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(NotFoundError, match="not an index"):
        FaissGradientStore(tmp_path)


def test_incompatible_model_is_refused(tmp_path: Path, classifier_index: Path) -> None:
    copy = tmp_path / "idx"
    shutil.copytree(classifier_index, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["model_dir"] = str(save_classifier(tmp_path / "other", seed=1))  # other weights
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexIncompatibleError, match="checksum"):
        Explainer.from_index(copy)
    manifest["format_version"] = 99
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexIncompatibleError, match="rebuild"):
        FaissGradientStore(copy)


def test_jsonl_reader_reports_every_bad_row(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {"id": "a", "text": "ok", "label": "neutral"},
            {"text": "", "label": "neutral"},
            {"text": "x"},
            {"text": "x", "label": "sideways"},
            {"id": "a", "text": "dup", "label": "neutral"},
        ],
    )
    with path.open("a") as f:
        f.write("{not json\n")
    examples, errors = read_examples_jsonl(path, "classification", LABELS)
    assert [e.id for e in examples] == ["a"]
    assert [e.line for e in errors] == [2, 3, 4, 5, 6]
    assert "unknown label 'sideways'" in errors[2].message
    assert "duplicate id" in errors[3].message


def test_float16_storage_halves_vectors_and_keeps_search_exact(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((300, 32)).astype(np.float32)
    examples = [Example(id=f"e{i}", text=f"t{i}", label="neutral") for i in range(300)]
    half = replace(_manifest(300, 32), vector_dtype="float16")
    store = FaissGradientStore(write_index(tmp_path / "h", half, vectors, examples))
    full = FaissGradientStore(write_index(tmp_path / "f", _manifest(300, 32), vectors, examples))
    assert store.vectors.dtype == np.float16
    assert (tmp_path / "h" / "vectors.npy").stat().st_size < 0.55 * (tmp_path / "f" / "vectors.npy").stat().st_size
    query = rng.standard_normal(32).astype(np.float32)
    rounded = vectors.astype(np.float16).astype(np.float32)
    scores, rows = store.search(query, 10)
    np.testing.assert_array_equal(rows, np.argsort(-(rounded @ query))[:10])
    np.testing.assert_allclose(scores, (rounded @ query)[rows], rtol=1e-4)
    assert store.vectors_at(rows).dtype == np.float32
    np.testing.assert_allclose(store.vectors_at(rows), full.vectors_at(rows), rtol=1e-3, atol=1e-3)
    with pytest.raises(InvalidInputError, match="vector dtype"):
        write_index(tmp_path / "x", replace(half, vector_dtype="int8"), vectors, examples)


def test_a_folder_holding_index_and_model_can_move(
    tmp_path: Path, classifier_dir: Path, classifier_index: Path
) -> None:
    """A model beside the index is found beside it after the folder moves (another host, a container
    volume); an index copied on its own still finds the model where it was."""
    from exemplar.store import read_manifest

    project = tmp_path / "project"
    shutil.copytree(classifier_dir, project / "model")
    shutil.copytree(classifier_index, project / "index")
    manifest = json.loads((project / "index" / "manifest.json").read_text())
    manifest["model_dir"] = str(project / "model")
    manifest["written_to"] = str(project / "index")
    (project / "index" / "manifest.json").write_text(json.dumps(manifest))

    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    shutil.move(project, moved)
    assert read_manifest(moved / "index").model_dir == str(moved / "model")
    explainer = Explainer.from_index(moved / "index")  # the checksum still decides
    assert explainer.explain(Example(text="stocks fell"), k=2).examples

    alone = tmp_path / "alone"
    shutil.copytree(moved / "index", alone)
    manifest["written_to"] = str(moved / "index")
    manifest["model_dir"] = str(moved / "model")
    (alone / "manifest.json").write_text(json.dumps(manifest))
    assert read_manifest(alone).model_dir == str(moved / "model")  # nothing beside it: as recorded


def test_the_manifest_records_where_it_was_written(tmp_path: Path, classifier_index: Path) -> None:
    from exemplar.store import read_manifest

    assert read_manifest(classifier_index).written_to == str(classifier_index.resolve())


def test_a_moved_model_is_named_at_start_up_and_checked_by_checksum(
    tmp_path: Path, classifier_dir: Path, classifier_index: Path
) -> None:
    """`--model DIR` (`EXEMPLAR_MODEL_DIR`) says where the model is when the manifest's path is gone."""
    from exemplar.errors import NotFoundError as Missing

    index = copy_without_its_model(classifier_index, tmp_path / "index")
    with pytest.raises(Missing, match="--model DIR"):
        Explainer.from_index(index)
    moved = shutil.copytree(classifier_dir, tmp_path / "models" / "clf")
    assert Explainer.from_index(index, model_dir=moved).explain(Example(text="stocks fell"), k=2).examples
    other = save_classifier(tmp_path / "other", seed=1)
    with pytest.raises(IndexIncompatibleError, match="checksum"):
        Explainer.from_index(index, model_dir=other)
