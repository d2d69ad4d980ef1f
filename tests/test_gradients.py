"""Oracle tests: batched projected gradients equal per-example autograd + projection."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from exemplar.errors import InvalidInputError
from exemplar.gradients import KroneckerFeaturizer, ProjectionConfig, ReferenceFeaturizer, select_linear_layers
from exemplar.tasks import CausalLMTask, ClassificationTask, Example
from tests.tiny_models import LABELS, add_lora, tiny_causal_lm, tiny_classifier, tiny_tokenizer

# float32 rounding across different reduction orders (batched with padding vs one by one)
RTOL, ATOL = 1e-4, 1e-6

TEXTS = ["the cat sat on the mat", "stocks fell", "i love this movie so much and the team won", "free prize"]
PAIRS = [
    ("is this message spam or ham", "spam"),
    ("what a boring afternoon", "see you at lunch tomorrow"),
    ("the team", "won the final match"),
]


def _assert_close(fast: np.ndarray, slow: np.ndarray) -> None:
    scale = np.abs(slow).max()
    assert scale > 0, "oracle gradients are all zero: the test would be vacuous"
    np.testing.assert_allclose(fast, slow, rtol=RTOL, atol=ATOL * max(1.0, scale))


@pytest.mark.parametrize("params", ["linear", "regex:attention"])
def test_classification_matches_reference(params: str) -> None:
    task = ClassificationTask(tiny_tokenizer(), {label: i for i, label in enumerate(LABELS)})
    examples = [Example(text=t, label=LABELS[i % 3]) for i, t in enumerate(TEXTS)] + [Example(text="the dog")]
    config = ProjectionConfig(params=params, proj_dim=16, seed=3)
    fast = KroneckerFeaturizer(tiny_classifier(), task, config, batch_size=8).featurize(examples)
    slow = ReferenceFeaturizer(tiny_classifier(), task, config).featurize(examples)
    _assert_close(fast.vectors, slow.vectors)
    np.testing.assert_allclose(fast.losses, slow.losses, rtol=1e-5)
    assert fast.predictions[-1]["explained_label"] == fast.predictions[-1]["label"]


@pytest.mark.parametrize("lora", [False, True])
def test_causal_lm_matches_reference(lora: bool) -> None:
    def model() -> torch.nn.Module:
        base = tiny_causal_lm()
        return add_lora(base) if lora else base

    task = CausalLMTask(tiny_tokenizer(chat=True))
    examples = [Example(prompt=p, response=r) for p, r in PAIRS]
    config = ProjectionConfig(params="lora" if lora else "linear", proj_dim=9, seed=1)
    fast = KroneckerFeaturizer(model(), task, config, batch_size=8).featurize(examples)
    slow = ReferenceFeaturizer(model(), task, config).featurize(examples)
    assert fast.vectors.shape == (3, config.proj_dim * len(fast_layers(model(), config.params)))
    _assert_close(fast.vectors, slow.vectors)


def fast_layers(model: torch.nn.Module, params: str) -> list[str]:
    return [n for n, _ in select_linear_layers(model, params)]


def test_response_only_loss_ignores_prompt_tokens() -> None:
    task = CausalLMTask(tiny_tokenizer(chat=True))
    enc = task.encode(Example(prompt="the cat", response="sat on the mat"))
    prompt_ids, response_ids = task.split_ids("the cat", "sat on the mat")
    labels = enc.target
    assert isinstance(labels, list)
    assert labels[: len(prompt_ids)] == [-100] * len(prompt_ids)
    assert labels[len(prompt_ids) :] == response_ids


def test_projection_is_deterministic_and_seeded() -> None:
    task = ClassificationTask(tiny_tokenizer(), {label: i for i, label in enumerate(LABELS)})
    ex = [Example(text="the cat", label="positive")]
    a = KroneckerFeaturizer(tiny_classifier(), task, ProjectionConfig(seed=0, proj_dim=16)).featurize(ex).vectors
    b = KroneckerFeaturizer(tiny_classifier(), task, ProjectionConfig(seed=0, proj_dim=16)).featurize(ex).vectors
    c = KroneckerFeaturizer(tiny_classifier(), task, ProjectionConfig(seed=1, proj_dim=16)).featurize(ex).vectors
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_bad_configs_are_refused() -> None:
    task = ClassificationTask(tiny_tokenizer(), {label: i for i, label in enumerate(LABELS)})
    with pytest.raises(InvalidInputError, match="perfect square"):
        KroneckerFeaturizer(tiny_classifier(), task, ProjectionConfig(proj_dim=10))
    with pytest.raises(InvalidInputError, match="LoRA"):
        KroneckerFeaturizer(tiny_classifier(), task, ProjectionConfig(params="lora"))
    with pytest.raises(InvalidInputError, match="unknown label"):
        task.encode(Example(text="x", label="sideways"))


def test_causal_loss_equals_full_logits_transcription() -> None:
    """Logits are computed only at response positions; the loss must equal the full-logits definition."""
    model = add_lora(tiny_causal_lm())
    task = CausalLMTask(tiny_tokenizer(chat=True))
    encoded = [task.encode(Example(prompt=p, response=r)) for p, r in PAIRS]
    batch = task.collate(encoded)
    with torch.no_grad():
        fast = task.per_example_loss(model, batch).losses
        full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    for i, enc in enumerate(encoded):
        logp = torch.log_softmax(full[i, : len(enc.input_ids)].double(), dim=-1)
        labels = enc.target
        assert isinstance(labels, list)
        terms = [-logp[t - 1, labels[t]] for t in range(1, len(labels)) if labels[t] != -100]
        assert float(fast[i]) == pytest.approx(float(sum(terms) / len(terms)), rel=1e-5)
