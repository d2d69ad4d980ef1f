"""Tasks: how a model's loss on one example is defined.

Implementations:
- `ClassificationTask`: sequence classification, cross-entropy on the label. A query
  without a label is explained for the model's own prediction.
- `CausalLMTask`: causal LM, mean token cross-entropy over the response tokens only (the
  prompt is context), with the tokenizer's chat template when it has one. A conversation
  (`messages`: system, user and assistant turns) is rendered with the chat template and its
  final assistant turn is the response.

Every task returns one loss per example (`per_example_loss`), so that summing them and
differentiating once yields each example's own gradient at every layer output.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch
import torch.nn.functional as F

from exemplar.errors import InvalidInputError

TaskName = Literal["classification", "causal-lm"]
TASK_NAMES: tuple[str, ...] = ("classification", "causal-lm")
IGNORE_INDEX = -100


@dataclass(frozen=True)
class Example:
    """One training or query example; which fields are used depends on the task."""

    id: str | None = None
    text: str | None = None
    label: str | None = None
    prompt: str | None = None
    response: str | None = None
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    messages: list[dict[str, str]] | None = None  # causal LM: a conversation; its last turn is the response
    text_pair: str | None = None  # classification: the second text of a sentence pair


ROLES = ("system", "user", "assistant")


def check_messages(messages: Any, last: str = "assistant") -> str | None:
    """What is wrong with a conversation, or None: a list of {"role", "content"} turns (roles
    system, user, assistant), the last one `last`'s (the assistant's: the response explained; the
    user's: a conversation for the model to answer), with at least one turn before an assistant's."""
    if not isinstance(messages, list) or len(messages) < (2 if last == "assistant" else 1):
        return "'messages' must be a list of at least two turns, the last the assistant's"
    for i, turn in enumerate(messages):
        if not isinstance(turn, dict) or set(turn) != {"role", "content"}:
            return f"messages[{i}] must be an object with exactly 'role' and 'content'"
        if turn["role"] not in ROLES:
            return f"messages[{i}].role must be one of {', '.join(ROLES)}; got {turn['role']!r}"
        if not isinstance(turn["content"], str) or not turn["content"].strip():
            return f"messages[{i}].content must be a non-empty string"
    if messages[-1]["role"] != last:
        if last == "user":
            return "to have the model answer a conversation, its last turn must be the user's"
        return "the last of 'messages' must be the assistant's turn: it is the response explained"
    return None


@dataclass(frozen=True)
class Encoded:
    """Token ids of one example and its loss targets.

    `target` is the class id for classification (-1: use the model's prediction) and the
    per-token labels for causal LM (IGNORE_INDEX outside the response).
    """

    input_ids: list[int]
    target: int | list[int]
    truncated: bool = False
    token_type_ids: list[int] | None = None  # sentence pairs, for models with segment embeddings


@dataclass
class LossOutput:
    """Per-example losses `(B,)` and what the model predicted for each example."""

    losses: torch.Tensor
    predictions: list[dict[str, Any]]


class Task(Protocol):
    """What a loss is for a model family; shared by index build and query time."""

    name: str
    max_length: int

    def encode(self, example: Example) -> Encoded: ...

    def lexical_ids(self, example: Example) -> list[int]: ...

    def collate(self, batch: Sequence[Encoded]) -> dict[str, torch.Tensor]: ...

    def per_example_loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> LossOutput: ...


def _pad(seqs: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    out = torch.full((len(seqs), width), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(list(s), dtype=torch.long)
    return out


def _require_text(value: str | None, name: str) -> str:
    if value is None or not value.strip():
        raise InvalidInputError(f"'{name}' must be a non-empty string")
    return value


class ClassificationTask:
    """Cross-entropy of a sequence classifier on the label (or its own prediction)."""

    name = "classification"

    def __init__(self, tokenizer: Any, label2id: dict[str, int], max_length: int = 128) -> None:
        self.tokenizer = tokenizer
        self.label2id = dict(label2id)
        self.id2label = {v: k for k, v in self.label2id.items()}
        self.max_length = max_length
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def encode(self, example: Example) -> Encoded:
        text = _require_text(example.text, "text")
        if example.label is None:
            target = -1
        elif example.label in self.label2id:
            target = self.label2id[example.label]
        else:
            known = ", ".join(sorted(self.label2id))
            raise InvalidInputError(f"unknown label {example.label!r}; this model's labels are: {known}")
        if example.text_pair is not None:
            return self._encode_pair(text, _require_text(example.text_pair, "text_pair"), target)
        ids = self.tokenizer(text, add_special_tokens=True)["input_ids"]
        truncated = len(ids) > self.max_length
        if truncated:  # keep the closing special token (e.g. [SEP])
            ids = ids[: self.max_length - 1] + ids[-1:]
        return Encoded(input_ids=list(ids), target=target, truncated=truncated)

    def _encode_pair(self, text: str, text_pair: str, target: int) -> Encoded:
        """A sentence pair as the tokenizer joins it (separators, segment ids); too long: the longer
        of the two loses tokens first."""
        enc = self.tokenizer(text, text_pair, add_special_tokens=True)
        truncated = len(enc["input_ids"]) > self.max_length
        if truncated:
            enc = self.tokenizer(
                text, text_pair, add_special_tokens=True, truncation="longest_first", max_length=self.max_length
            )
        types = enc.get("token_type_ids")
        return Encoded(list(enc["input_ids"]), target, truncated, list(types) if types is not None else None)

    def lexical_ids(self, example: Example) -> list[int]:
        """Content token ids (no special tokens), for lexical estimators."""
        texts = [_require_text(example.text, "text"), *([example.text_pair] if example.text_pair else [])]
        return [i for t in texts for i in self.tokenizer(t, add_special_tokens=False)["input_ids"]]

    def collate(self, batch: Sequence[Encoded]) -> dict[str, torch.Tensor]:
        input_ids = _pad([e.input_ids for e in batch], self.pad_id)
        mask = _pad([[1] * len(e.input_ids) for e in batch], 0)
        targets = torch.tensor([int(e.target) for e in batch], dtype=torch.long)  # type: ignore[arg-type]
        out = {"input_ids": input_ids, "attention_mask": mask, "targets": targets}
        if any(e.token_type_ids is not None for e in batch):
            out["token_type_ids"] = _pad([e.token_type_ids or [0] * len(e.input_ids) for e in batch], 0)
        return out

    def per_example_loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> LossOutput:
        segments = {"token_type_ids": batch["token_type_ids"]} if "token_type_ids" in batch else {}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **segments).logits
        probs = torch.softmax(logits.detach().float(), dim=-1)
        predicted = probs.argmax(dim=-1)
        targets = torch.where(batch["targets"] < 0, predicted, batch["targets"])
        losses = F.cross_entropy(logits.float(), targets, reduction="none")
        predictions = [
            {
                "label": self.id2label[int(predicted[i])],
                "probabilities": {self.id2label[j]: float(p) for j, p in enumerate(probs[i].tolist())},
                "explained_label": self.id2label[int(targets[i])],
            }
            for i in range(len(targets))
        ]
        return LossOutput(losses=losses, predictions=predictions)


class CausalLMTask:
    """Mean token cross-entropy of a causal LM over the response tokens (teacher forcing)."""

    name = "causal-lm"

    def __init__(self, tokenizer: Any, max_length: int = 256) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = int(pad) if pad is not None else 0

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt_ids(self, prompt: str | list[dict[str, str]]) -> list[int]:
        """Token ids of the prompt as `split_ids` renders it (or of a conversation whose last turn is
        the user's, as `conversation_ids` renders it), ready for the response to follow."""
        tok = self.tokenizer
        if isinstance(prompt, list):
            if problem := check_messages(prompt, last="user"):
                raise InvalidInputError(problem)
            if not getattr(tok, "chat_template", None):
                raise InvalidInputError("this model's tokenizer has no chat template: send 'prompt' and 'response'")
            return self._ids(tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False))
        if getattr(tok, "chat_template", None):
            user = [{"role": "user", "content": prompt}]
            return self._ids(tok.apply_chat_template(user, add_generation_prompt=True, tokenize=False))
        return ([tok.bos_token_id] if tok.bos_token_id is not None else []) + self._ids(prompt)

    def split_ids(self, prompt: str, response: str) -> tuple[list[int], list[int]]:
        """Token ids of the prompt (with chat scaffolding) and of the response."""
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            user = [{"role": "user", "content": prompt}]
            prompt_text = tok.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
            full_text = tok.apply_chat_template([*user, {"role": "assistant", "content": response}], tokenize=False)
            prompt_ids, full_ids = self._ids(prompt_text), self._ids(full_text)
            if full_ids[: len(prompt_ids)] == prompt_ids and len(full_ids) > len(prompt_ids):
                return prompt_ids, full_ids[len(prompt_ids) :]
        bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
        eos = [tok.eos_token_id] if tok.eos_token_id is not None else []
        return bos + self._ids(prompt), self._ids(" " + response) + eos

    def conversation_ids(self, messages: list[dict[str, str]]) -> tuple[list[int], list[int]]:
        """Token ids of a conversation up to its final assistant turn (with the chat template's
        generation prompt) and of that turn, as the chat template renders them."""
        problem = check_messages(messages)
        if problem:
            raise InvalidInputError(problem)
        tok = self.tokenizer
        if not getattr(tok, "chat_template", None):
            raise InvalidInputError("this model's tokenizer has no chat template: send 'prompt' and 'response'")
        head = self._ids(tok.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False))
        full = self._ids(tok.apply_chat_template(messages, tokenize=False))
        if full[: len(head)] != head or len(full) == len(head):
            raise InvalidInputError("the chat template does not render the last turn after the others")
        return head, full[len(head) :]

    def encode(self, example: Example) -> Encoded:
        if example.messages is not None:
            prompt_ids, response_ids = self.conversation_ids(example.messages)
        else:
            prompt = _require_text(example.prompt, "prompt")
            response = _require_text(example.response, "response")
            prompt_ids, response_ids = self.split_ids(prompt, response)
        truncated = len(prompt_ids) + len(response_ids) > self.max_length
        if truncated:  # keep the response, drop the start of the prompt
            response_ids = response_ids[: self.max_length - 1]
            keep = self.max_length - len(response_ids)
            prompt_ids = prompt_ids[len(prompt_ids) - keep :]
        labels = [IGNORE_INDEX] * len(prompt_ids) + response_ids
        return Encoded(input_ids=prompt_ids + response_ids, target=labels, truncated=truncated)

    def lexical_ids(self, example: Example) -> list[int]:
        """Content token ids of prompt and response (no chat scaffolding), for lexical estimators."""
        if example.messages is not None:
            return [i for turn in example.messages for i in self._ids(" " + turn["content"])]
        prompt = _require_text(example.prompt, "prompt")
        response = _require_text(example.response, "response")
        return self._ids(prompt) + self._ids(" " + response)

    def collate(self, batch: Sequence[Encoded]) -> dict[str, torch.Tensor]:
        input_ids = _pad([e.input_ids for e in batch], self.pad_id)
        mask = _pad([[1] * len(e.input_ids) for e in batch], 0)
        labels = _pad([e.target for e in batch], IGNORE_INDEX)  # type: ignore[misc]
        return {"input_ids": input_ids, "attention_mask": mask, "targets": labels}

    def per_example_loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> LossOutput:
        # logits only where some example of the batch has a response token to predict: the
        # full-vocabulary logits of the prompt positions would dominate memory
        shift_labels = batch["targets"][:, 1:]  # position p predicts token p + 1
        positions = (shift_labels != IGNORE_INDEX).any(dim=0).nonzero().squeeze(1)  # (P,)
        logits = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=positions
        ).logits  # (B, P, V)
        kept_labels = shift_labels[:, positions]
        token_losses = F.cross_entropy(
            logits.float().transpose(1, 2), kept_labels, ignore_index=IGNORE_INDEX, reduction="none"
        )  # (B, P)
        counts = (kept_labels != IGNORE_INDEX).sum(dim=1).clamp(min=1)
        losses = token_losses.sum(dim=1) / counts
        detached, mean_losses = token_losses.detach(), losses.detach()
        predictions = [
            {
                "response_logprob": -float(detached[i].sum()),
                "mean_token_loss": float(mean_losses[i]),
                "response_tokens": int(counts[i]),
            }
            for i in range(len(losses))
        ]
        return LossOutput(losses=losses, predictions=predictions)


def make_task(
    name: str, tokenizer: Any, *, label2id: dict[str, int] | None = None, max_length: int | None = None
) -> Task:
    """Build a task by registry name."""
    if name == "classification":
        if not label2id:
            raise InvalidInputError("a classification task needs the model's label names (config.label2id)")
        return ClassificationTask(tokenizer, label2id, max_length or 128)
    if name == "causal-lm":
        return CausalLMTask(tokenizer, max_length or 256)
    raise InvalidInputError(f"unknown task {name!r}; choose one of: {', '.join(TASK_NAMES)}")
