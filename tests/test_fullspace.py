"""Oracle tests: the batched full-space Gram equals materialised per-example gradients (float64),
and the score from a Gram equals the score from the materialised matrix."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from exemplar import fullspace
from exemplar.fullspace import KroneckerGram, ReferenceGram
from exemplar.gradients import KroneckerFeaturizer, ProjectionConfig, select_linear_layers
from exemplar.relevance import gram_relevance, paper_weights_gram, selection_relevance
from exemplar.simplex import project_onto_simplex
from exemplar.tasks import CausalLMTask, ClassificationTask, Example, Task
from tests.tiny_models import LABELS, add_lora, tiny_causal_lm, tiny_classifier, tiny_tokenizer

# products of float32 activations, summed in other orders than the oracle's (float32: per layer)
GRAM_RTOL = {torch.float64: 1e-5, torch.float32: 1e-4}

TEXTS = ["the cat sat on the mat", "stocks fell", "i love this movie so much and the team won", "free prize", "a"]
PAIRS = [
    ("is this message spam or ham", "spam"),
    ("what a boring afternoon", "see you at lunch tomorrow"),
    ("the team", "won the final match"),
    ("free prize call now to claim the new phone released with a faster chip", "no"),
]


def _classification() -> tuple[torch.nn.Module, Task, list[Example]]:
    task = ClassificationTask(tiny_tokenizer(), {label: i for i, label in enumerate(LABELS)})
    examples = [Example(text=t, label=LABELS[i % 3]) for i, t in enumerate(TEXTS)] + [Example(text="the dog")]
    return tiny_classifier(), task, examples


def _causal(lora: bool) -> tuple[torch.nn.Module, Task, list[Example]]:
    model = add_lora(tiny_causal_lm()) if lora else tiny_causal_lm()
    return model, CausalLMTask(tiny_tokenizer(chat=True)), [Example(prompt=p, response=r) for p, r in PAIRS]


CASES = {
    "bert-linear": lambda: (*_classification(), "linear"),
    "llama-linear": lambda: (*_causal(False), "linear"),
    "llama-lora": lambda: (*_causal(True), "lora"),
}


FORMS = ("cheaper", "tokens", "dense")


def _form(form: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """KroneckerGram arguments (and a patch) that force one per-layer form, or leave the choice to cost."""
    if form == "dense":
        monkeypatch.setattr(fullspace, "DENSE_PENALTY", 0.0)  # the dense form always looks cheaper
    return {"dense_max_elements": 0} if form == "tokens" else {}


def _pair(case: str, **kwargs: Any) -> tuple[KroneckerGram, ReferenceGram, list[Example]]:
    model, task, examples, params = CASES[case]()
    featurizer = KroneckerFeaturizer(model, task, ProjectionConfig(params=params, proj_dim=4), batch_size=3)
    fast = KroneckerGram(model, task, featurizer.layers, batches=featurizer.batches, **kwargs)
    slow = ReferenceGram(model, task, select_linear_layers(model, params))
    return fast, slow, examples


def _assert_gram_close(fast: fullspace.FullGram, slow: fullspace.FullGram, dtype: torch.dtype) -> None:
    rtol = GRAM_RTOL[dtype]
    scale = float(np.abs(slow.gram).max())
    assert scale > 0, "oracle gradients are zero: the test would be vacuous"
    np.testing.assert_allclose(fast.gram, slow.gram, rtol=rtol, atol=rtol * scale)
    # coordinate sums nearly cancel (LayerNorm), down to float32 noise: compare them on the scale
    # of the largest sum a gradient of this norm can have, sqrt(d) |G|, which is what the
    # variance's mean term is measured against
    np.testing.assert_allclose(fast.sums, slow.sums, rtol=0, atol=rtol * np.sqrt(slow.dims * scale))
    np.testing.assert_allclose(fast.losses, slow.losses, rtol=1e-5)
    assert fast.dims == slow.dims


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gram_matches_materialised_gradients(
    case: str, form: str, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Padded batches of 3 (different lengths), both per-layer forms, both product precisions."""
    fast, slow, examples = _pair(case, dtype=dtype, **_form(form, monkeypatch))
    _assert_gram_close(fast.gram(examples), slow.gram(examples), dtype)


@pytest.mark.parametrize("case", sorted(CASES))
def test_gram_across_chunks_matches(case: str) -> None:
    """Chunks of a few tokens: every cross-chunk block is recomputed and must agree."""
    fast, slow, examples = _pair(case, max_chunk_tokens=12)
    assert len(fast._chunks([fast.task.encode(e) for e in examples])) > 2
    _assert_gram_close(fast.gram(examples), slow.gram(examples), fast.dtype)


@pytest.mark.parametrize("case", sorted(CASES))
def test_prefix_factors_from_featurisation_stand_for_the_example(case: str) -> None:
    """The query's factors kept by the featuriser give the same Gram as running the query again."""
    model, task, examples, params = CASES[case]()
    featurizer = KroneckerFeaturizer(model, task, ProjectionConfig(params=params, proj_dim=4), batch_size=3)
    fast = KroneckerGram(model, task, featurizer.layers, batches=featurizer.batches)
    kept = featurizer.featurize(examples[:2], keep_factors=True).factors
    assert kept is not None
    with_prefix = fast.gram(examples[2:], prefix=kept[1])
    again = fast.gram([examples[1], *examples[2:]])
    np.testing.assert_allclose(with_prefix.gram, again.gram, rtol=1e-6, atol=1e-6 * np.abs(again.gram).max())
    np.testing.assert_allclose(
        with_prefix.sums, again.sums, rtol=0, atol=1e-6 * np.sqrt(again.dims * np.abs(again.gram).max())
    )
    assert with_prefix.losses == pytest.approx(again.losses, rel=1e-6)


def test_dims_count_every_tracked_weight() -> None:
    model, task, _ = _causal(True)
    layers = select_linear_layers(model, "lora")
    assert ReferenceGram(model, task, layers).dims == sum(m.weight.numel() for _, m in layers)


# ---------------------------------------------------------------- score from a Gram


def _score_inputs(g: np.ndarray, a: np.ndarray) -> dict[str, object]:
    return {
        "gram": a @ a.T,
        "b": a @ g,
        "gg": float(g @ g),
        "sums": a.sum(axis=1),
        "sum_g": float(g.sum()),
        "dims": g.shape[0],
    }


@pytest.mark.parametrize("solver", ["paper", "exact"])
@pytest.mark.parametrize("k", [1, 3, 8])
def test_gram_relevance_equals_materialised_score(solver: str, k: int) -> None:
    rng = np.random.default_rng(k)
    d = 500
    # float32 values (the score casts to float32) with a mean offset, so the variance's mean term matters
    g = (rng.normal(size=d) + 0.3).astype(np.float32).astype(np.float64)
    a = (0.6 * g + rng.normal(size=(k, d))).astype(np.float32).astype(np.float64)
    fast = gram_relevance(**_score_inputs(g, a), solver=solver)  # type: ignore[arg-type]
    slow = selection_relevance(g, a, solver=solver)
    np.testing.assert_allclose(fast.weights, slow.weights, atol=1e-9)
    assert fast.db == pytest.approx(slow.db, abs=1e-9)
    assert fast.var_r == pytest.approx(slow.var_r, rel=1e-9)


@pytest.mark.parametrize("spread", [1e-1, 1e-2, 1e-3])
def test_paper_weights_from_gram_equal_torch_pinv_on_the_matrix(spread: float) -> None:
    """Singular values 1 .. spread at d = 100,000: rtol = 0.0119 truncates the smaller ones, as torch does."""
    rng = np.random.default_rng(0)
    k, d = 6, 100_000
    u, _ = np.linalg.qr(rng.normal(size=(d, k)))
    v, _ = np.linalg.qr(rng.normal(size=(k, k)))
    sigma = np.geomspace(1.0, spread, k)
    at = ((u * sigma) @ v.T).astype(np.float32)  # (d, k) = A.T
    g = (at @ rng.normal(size=k) + 0.01 * rng.normal(size=d)).astype(np.float32)
    t_torch = (torch.linalg.pinv(torch.from_numpy(at)) @ torch.from_numpy(g)).double().numpy()
    a, g64 = at.T.astype(np.float64), g.astype(np.float64)
    ours = paper_weights_gram(a @ a.T, a @ g64, d)
    np.testing.assert_allclose(ours, project_onto_simplex(t_torch), atol=2e-4)
    truncated = int(np.sum(sigma <= max(k, d) * np.finfo(np.float32).eps))  # rtol = 0.0119
    assert truncated == (0 if spread == 1e-1 else 1 if spread == 1e-2 else 2)


def test_paper_weights_are_uniform_beyond_8_4m_dims_like_torch() -> None:
    """At d >= 1/eps(float32) torch's default pinv tolerance exceeds 1 and returns zero: uniform weights."""
    rng = np.random.default_rng(1)
    k, d = 3, 9_000_000
    a = rng.normal(size=(k, d)).astype(np.float32)
    g = (a[0] + 0.5 * a[1]).astype(np.float32)
    pinv = torch.linalg.pinv(torch.from_numpy(a.T))
    assert float(pinv.abs().max()) == 0.0
    gram = a.astype(np.float64) @ a.T.astype(np.float64)
    np.testing.assert_array_equal(paper_weights_gram(gram, a.astype(np.float64) @ g, d), np.full(k, 1 / 3))


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("max_chunk_tokens", [4096, 12])
@pytest.mark.parametrize("form", FORMS)
def test_subset_grams_equal_the_grams_of_the_subsets(
    case: str, max_chunk_tokens: int, form: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One pass over all examples, each subset's Gram from its own tokens or from the examples'
    dense gradients, the prefix first in each (or, above the chunk size, each subset on its own in
    chunks)."""
    fast, slow, examples = _pair(case, max_chunk_tokens=max_chunk_tokens, **_form(form, monkeypatch))
    featurizer = KroneckerFeaturizer(
        fast.model, fast.task, ProjectionConfig(params="linear" if case != "llama-lora" else "lora", proj_dim=4)
    )
    kept = featurizer.featurize(examples[:1], keep_factors=True).factors
    assert kept is not None
    subsets = [[2, 0], [0, 1, 2], [2]]
    grams = fast.subset_grams(examples[1:], subsets, prefix=kept[0])
    for subset, got in zip(subsets, grams, strict=True):
        _assert_gram_close(got, slow.gram([examples[0], *(examples[1 + j] for j in subset)]), fast.dtype)


@pytest.mark.parametrize("case", sorted(CASES))
def test_projection_of_kept_factors_equals_featurisation(case: str) -> None:
    """One pass's factors, streamed in chunks, projected afterwards: the featuriser's own vectors."""
    model, task, examples, params = CASES[case]()
    featurizer = KroneckerFeaturizer(model, task, ProjectionConfig(params=params, proj_dim=4), batch_size=3)
    fast = KroneckerGram(model, task, featurizer.layers, batches=featurizer.batches, max_chunk_tokens=12)
    expected = featurizer.featurize(examples).vectors
    got = np.zeros_like(expected)
    chunks = 0
    for rows, factors in fast.stream(examples):
        got[rows] = featurizer.project(factors)
        chunks += 1
    assert chunks > 1
    assert np.abs(expected).max() > 0
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max())


@pytest.mark.parametrize("case", sorted(CASES))
def test_heavy_work_holds_the_model_for_a_few_examples_at_a_time(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """On the API's heavy lane the forward/backward runs in holds of at most HEAVY_HOLD_ROWS examples
    (light requests wait for one of those at most); the Grams are the same."""
    import contextlib
    from collections.abc import Iterator

    from exemplar import threads

    monkeypatch.setattr(threads, "HEAVY_HOLD_ROWS", 1)
    fast, _, examples = _pair(case)
    holds: list[int] = []

    @contextlib.contextmanager
    def hold() -> Iterator[None]:
        holds.append(1)
        yield

    subsets = [[0, 1, 2]]
    light = fast.subset_grams(examples, subsets, model=hold)
    light_holds = len(holds)
    holds.clear()
    with threads.PRIORITY.heavy_work():
        heavy = fast.subset_grams(examples, subsets, model=hold)
    assert len(holds) == 1 + len(examples) > light_holds  # the tokenisation, then one example per hold
    np.testing.assert_allclose(heavy[0].gram, light[0].gram, rtol=1e-6, atol=1e-6 * float(np.abs(light[0].gram).max()))
