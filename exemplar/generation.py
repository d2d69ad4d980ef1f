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


def generate_response(explainer: Explainer, prompt: str | list[dict[str, str]], max_new_tokens: int) -> str:
    """The model's greedy continuation of `prompt` (at most `max_new_tokens` tokens, stopping at
    its end-of-sequence token), decoded without special tokens; `prompt` may be a conversation
    whose last turn is the user's. Holds the model while it runs."""
    task = explainer.featurizer.task
    if not isinstance(task, CausalLMTask):
        raise InvalidInputError("only a causal-LM index can generate a response; this one is a classifier")
    if not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise InvalidInputError(f"max_new_tokens must be between 1 and {MAX_NEW_TOKENS}; got {max_new_tokens}")
    if isinstance(prompt, str) and not prompt.strip():
        raise InvalidInputError("'prompt' must be a non-empty string")
    model, tokenizer = explainer.featurizer.model, task.tokenizer
    with explainer.hold_model(), torch.no_grad():  # the tokenizer is not thread-safe either
        ids = task.prompt_ids(prompt)
        room = task.max_length - len(ids)
        if room < 2:
            raise InvalidInputError(
                f"the prompt alone takes {len(ids)} of this index's {task.max_length} tokens; shorten it"
            )
        input_ids = torch.tensor([ids], device=next(model.parameters()).device)
        out = model.generate(  # type: ignore[operator]
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=min(max_new_tokens, room),
            do_sample=False,
            pad_token_id=task.pad_id,
        )
        new = out[0, len(ids) :].tolist()
        text = ""
        while new:  # the explained query re-encodes the answer with the end-of-turn tokens: it must fit
            text = str(tokenizer.decode(new, skip_special_tokens=True)).strip()
            if not text:
                break
            if isinstance(prompt, list):
                prompt_part, response_part = task.conversation_ids([*prompt, {"role": "assistant", "content": text}])
            else:
                prompt_part, response_part = task.split_ids(prompt, text)
            over = len(prompt_part) + len(response_part) - task.max_length
            if over <= 0:
                break
            new, text = new[: len(new) - over], ""
    if not text:
        raise InvalidInputError("the model generated an empty response to this prompt; send a 'response' to explain")
    return text
