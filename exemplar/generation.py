"""Explain what the model says: a causal LM's greedy response to a prompt, rendered the way the
index's task renders prompts (its chat template, or BOS + prompt), so that the response explained
afterwards is the one the model produced.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from exemplar.errors import InvalidInputError
from exemplar.tasks import CausalLMTask

if TYPE_CHECKING:
    from exemplar.explain import Explainer

MAX_NEW_TOKENS = 512
"""Hard upper bound of `max_new_tokens`; a service sets its own, lower limit."""


def generate_response(explainer: Explainer, prompt: str, max_new_tokens: int) -> str:
    """The model's greedy continuation of `prompt` (at most `max_new_tokens` tokens, stopping at
    its end-of-sequence token), decoded without special tokens. Holds the model while it runs."""
    task = explainer.featurizer.task
    if not isinstance(task, CausalLMTask):
        raise InvalidInputError("only a causal-LM index can generate a response; this one is a classifier")
    if not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise InvalidInputError(f"max_new_tokens must be between 1 and {MAX_NEW_TOKENS}; got {max_new_tokens}")
    if not prompt.strip():
        raise InvalidInputError("'prompt' must be a non-empty string")
    model, tokenizer = explainer.featurizer.model, task.tokenizer
    ids = task.prompt_ids(prompt)
    room = task.max_length - len(ids)
    if room < 1:
        raise InvalidInputError(
            f"the prompt alone takes {len(ids)} of this index's {task.max_length} tokens; shorten it"
        )
    device = next(model.parameters()).device
    input_ids = torch.tensor([ids], device=device)
    with explainer.hold_model(), torch.no_grad():
        out = model.generate(  # type: ignore[operator]
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=min(max_new_tokens, room),
            do_sample=False,
            pad_token_id=task.pad_id,
        )
    text = str(tokenizer.decode(out[0, len(ids) :].tolist(), skip_special_tokens=True)).strip()
    if not text:
        raise InvalidInputError("the model generated an empty response to this prompt; send a 'response' to explain")
    return text
