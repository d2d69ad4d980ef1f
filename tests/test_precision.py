"""Weights in bfloat16/float16 and the device: vectors against float32, the manifest, refusals.

Measured on this suite's tiny models (2026-12-07, CPU): bfloat16 weights move the projected
vectors by 0.65 % (median) and at most 1.0 % relative to float32 (cosine >= 0.99995); float16 by
at most 0.18 %. The tolerances below are three times those. On the real MiniLM (the tiny demo,
benchmarks/precision.py, docs/benchmarks.md) bfloat16 moved them by 0.67 % median, 2.0 % at most.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from exemplar.build import build_index
from exemplar.errors import IndexIncompatibleError, InvalidInputError
from exemplar.explain import Explainer
from exemplar.gradients import ProjectionConfig
from exemplar.index import build_featurizer
from exemplar.jsonl import read_examples_jsonl
from exemplar.models import load_model, resolve_device
from exemplar.tasks import Example
from tests.tiny_models import CORPUS, LABELS

TOLERANCE = {"bfloat16": 0.03, "float16": 0.006}  # max relative error of a vector against float32


def relative_errors(vectors: np.ndarray, reference: np.ndarray) -> np.ndarray:
    return np.linalg.norm(vectors - reference, axis=1) / np.linalg.norm(reference, axis=1)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("kind", ["classification", "causal-lm"])
def test_low_precision_vectors_stay_within_the_measured_tolerance(
    dtype: str, kind: str, classifier_dir: Path, causal_adapter_dir: Path
) -> None:
    if kind == "classification":
        path, params = classifier_dir, "linear"
        examples = [Example(text=t, label=LABELS[i % 3]) for i, t in enumerate(CORPUS)]
    else:
        path, params = causal_adapter_dir, "lora"
        examples = [Example(prompt=t, response=CORPUS[(i + 1) % len(CORPUS)]) for i, t in enumerate(CORPUS)]
    config = ProjectionConfig(params=params, proj_dim=16, seed=0)
    vectors = {}
    for precision in ("float32", dtype):
        loaded = load_model(path, kind, dtype=precision)
        assert loaded.dtype == precision
        featurizer = build_featurizer(loaded, config, 64)
        batch = featurizer.featurize(examples)
        assert batch.vectors.dtype == np.float32  # projections and sums in float32
        vectors[precision] = batch.vectors
    errors = relative_errors(vectors[dtype], vectors["float32"])
    assert errors.max() < TOLERANCE[dtype], errors
    assert errors.max() > 0  # really computed in another precision


def test_a_bfloat16_index_records_it_and_is_queried_in_it(
    tmp_path: Path, classifier_dir: Path, classification_data: Path
) -> None:
    loaded = load_model(classifier_dir, "classification", dtype="bfloat16")
    examples, errors = read_examples_jsonl(classification_data, "classification", LABELS)
    assert not errors
    out = tmp_path / "bf16"
    build_index(loaded, examples, out, ProjectionConfig(params="linear", proj_dim=16, seed=0), max_length=32)
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["model_dtype"], manifest["device"]) == ("bfloat16", "cpu")
    explainer = Explainer.from_index(out)
    assert next(explainer.featurizer.model.parameters()).dtype == torch.bfloat16
    explanation = explainer.explain(Example(text="stocks fell"), k=3)
    assert len(explanation.examples) == 3
    assert explanation.score_db is not None
    assert np.isfinite(explanation.score_db)
    with pytest.raises(IndexIncompatibleError, match="built with bfloat16 weights"):
        Explainer.from_index(out, dtype="float32")


def test_devices_and_dtypes_are_checked() -> None:
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(InvalidInputError, match="choose auto"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(InvalidInputError, match="sees no CUDA GPU"):
            resolve_device("cuda:0")
    with pytest.raises(InvalidInputError, match="bfloat16"):
        load_model("/nonexistent", "classification", dtype="float8")


def test_a_new_version_in_another_precision_does_not_share_the_loaded_model(classifier_index: Path) -> None:
    from dataclasses import replace

    from exemplar.index import same_featurizer
    from exemplar.store import read_manifest

    manifest = read_manifest(classifier_index)
    assert same_featurizer(manifest, replace(manifest, n_examples=manifest.n_examples + 1))
    assert not same_featurizer(manifest, replace(manifest, model_dtype="bfloat16"))
