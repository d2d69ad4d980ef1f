"""Projected per-example loss gradients.

For a tracked linear layer with weight `W: (out, in)`, the gradient of one example's loss
is `G = sum_t dY_t X_t^T` over its tokens (layer inputs `X`, output gradients `dY`). We
store `P_out G P_in^T: (s, s)` with two seeded Gaussian matrices `P_out: (s, out)`,
`P_in: (s, in)` (entries N(0, 1/s), so inner products are preserved in expectation), one
pair per layer, concatenated over layers in a fixed order.

Implementations of `Featurizer`:
- `KroneckerFeaturizer`: the production path. One forward and one backward per batch;
  forward hooks project the layer inputs, `torch.autograd.grad` w.r.t. the layer outputs
  gives `dY` (no parameter `.grad` is touched), and
  `sum_t (P_out dY_t)(P_in X_t)^T` is the projected gradient. The full per-example
  gradient is never formed.
- `ReferenceFeaturizer`: the slow oracle. Per example, the full weight gradients by
  autograd, then the same projection applied to the full matrices.

Biases are not tracked (weights only); only `torch.nn.Linear` layers can be tracked.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from exemplar.errors import InvalidInputError
from exemplar.fullspace import LayerFactors, batch_factors, forward_backward
from exemplar.tasks import Encoded, Example, Task

ProgressFn = Callable[[int], None]


@dataclass(frozen=True)
class ProjectionConfig:
    """Which layers are tracked and how each is projected.

    `params`: "lora" (LoRA adapter matrices), "linear" (every nn.Linear), or
    "regex:PATTERN" (nn.Linear layers whose qualified name matches).
    `proj_dim`: dimensions per layer, a perfect square `s*s`.
    """

    params: str = "linear"
    proj_dim: int = 64
    seed: int = 0

    @property
    def side(self) -> int:
        return math.isqrt(self.proj_dim)

    def validate(self) -> None:
        if self.proj_dim < 1 or self.side * self.side != self.proj_dim:
            raise InvalidInputError(
                f"proj_dim must be a perfect square (s*s dims per layer, e.g. 16, 64, 256); got {self.proj_dim}"
            )
        if not (self.params in ("lora", "linear") or self.params.startswith("regex:")):
            raise InvalidInputError(f"params must be 'lora', 'linear' or 'regex:PATTERN'; got {self.params!r}")


def select_linear_layers(model: torch.nn.Module, params: str) -> list[tuple[str, torch.nn.Linear]]:
    """The tracked layers, in module order."""
    if params == "lora":
        keep: Callable[[str], bool] = lambda n: ".lora_A." in n + "." or ".lora_B." in n + "."  # noqa: E731
    elif params == "linear":
        keep = lambda n: True  # noqa: E731
    elif params.startswith("regex:"):
        try:
            pattern = re.compile(params[len("regex:") :])
        except re.error as exc:
            raise InvalidInputError(f"invalid regex in params {params!r}: {exc}") from exc
        keep = lambda n: pattern.search(n) is not None  # noqa: E731
    else:
        raise InvalidInputError(f"params must be 'lora', 'linear' or 'regex:PATTERN'; got {params!r}")
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and keep(n)]
    if not layers:
        hint = " (is a LoRA adapter loaded?)" if params == "lora" else ""
        raise InvalidInputError(f"parameter selection {params!r} matches no nn.Linear layer in this model{hint}")
    return layers


def _layer_seed(seed: int, name: str, side: str) -> int:
    digest = hashlib.sha256(f"{seed}:{name}:{side}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def projection_matrix(seed: int, name: str, side: str, rows: int, cols: int) -> torch.Tensor:
    """Seeded Gaussian matrix `(rows, cols)` with entries N(0, 1/rows), float32, deterministic."""
    gen = torch.Generator().manual_seed(_layer_seed(seed, name, side))
    return torch.randn(rows, cols, generator=gen, dtype=torch.float32) / math.sqrt(rows)


@dataclass
class FeatureBatch:
    """Projected gradients `vectors: (n, D)` float32 with each example's loss and prediction;
    with `keep_factors`, each example's unprojected layer inputs and output gradients, from which
    `exemplar.fullspace` computes its exact full-space inner products without another pass."""

    vectors: np.ndarray
    losses: list[float]
    predictions: list[dict[str, Any]]
    truncated: list[bool]
    factors: list[LayerFactors] | None = None


class Featurizer(Protocol):
    """Maps examples to projected loss gradients; the same object serves build and query."""

    dims: int
    layer_names: list[str]

    def featurize(
        self, examples: Sequence[Example], progress: ProgressFn | None = None, *, keep_factors: bool = False
    ) -> FeatureBatch: ...


class _Projected:
    """Shared set-up: tracked layers and their projection matrices."""

    def __init__(self, model: torch.nn.Module, task: Task, config: ProjectionConfig) -> None:
        config.validate()
        self.model, self.task, self.config = model, task, config
        self.layers = select_linear_layers(model, config.params)
        self.layer_names = [n for n, _ in self.layers]
        s = config.side
        # float32 on the model's device, whatever the weights' precision: inputs and gradients are
        # cast to float32 before they are projected (bf16 weights, float32 sums)
        self.device = next(model.parameters()).device
        self.p_in = {
            n: projection_matrix(config.seed, n, "in", s, m.in_features).to(self.device) for n, m in self.layers
        }
        self.p_out = {
            n: projection_matrix(config.seed, n, "out", s, m.out_features).to(self.device) for n, m in self.layers
        }
        self.dims = len(self.layers) * config.proj_dim
        model.eval()  # deterministic: no dropout
        tracked = {id(m.weight) for _, m in self.layers}
        for p in model.parameters():
            p.requires_grad_(id(p) in tracked)


class KroneckerFeaturizer(_Projected):
    """Batched projected gradients with module hooks (see module docstring)."""

    def __init__(
        self,
        model: torch.nn.Module,
        task: Task,
        config: ProjectionConfig,
        *,
        batch_size: int = 16,
        max_batch_tokens: int = 4096,
    ) -> None:
        super().__init__(model, task, config)
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens

    def batches(self, encoded: Sequence[Encoded]) -> list[list[int]]:
        """Indices grouped by similar length, bounded by batch size and padded tokens."""
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids))
        groups: list[list[int]] = []
        current: list[int] = []
        for i in order:
            width = len(encoded[i].input_ids)  # sorted ascending: the newest is the widest
            if current and (len(current) >= self.batch_size or width * (len(current) + 1) > self.max_batch_tokens):
                groups.append(current)
                current = []
            current.append(i)
        if current:
            groups.append(current)
        return groups

    def featurize(
        self, examples: Sequence[Example], progress: ProgressFn | None = None, *, keep_factors: bool = False
    ) -> FeatureBatch:
        encoded = [self.task.encode(e) for e in examples]
        n = len(encoded)
        vectors = np.zeros((n, self.dims), dtype=np.float32)
        losses: list[float] = [0.0] * n
        predictions: list[dict[str, Any]] = [{} for _ in range(n)]
        factors: list[LayerFactors | None] = [None] * n
        for group in self.batches(encoded):
            batch = self.task.collate([encoded[i] for i in group])
            vecs, out, raw = self._batch(batch, keep_factors)
            vectors[group] = vecs
            for j, i in enumerate(group):
                losses[i] = float(out.losses[j].detach())
                predictions[i] = out.predictions[j]
                if raw is not None:
                    factors[i] = LayerFactors.of_example(raw[0], raw[1], j, losses[i])
            if progress is not None:
                progress(len(group))
        kept = [f for f in factors if f is not None] if keep_factors else None
        return FeatureBatch(vectors, losses, predictions, [e.truncated for e in encoded], kept)

    def project(self, factors: LayerFactors) -> np.ndarray:
        """`(factors.n, dims)` projected gradients of examples whose layer factors an earlier pass
        kept (`KroneckerGram.stream`, `featurize(keep_factors=True)`): the vectors `featurize`
        returns, without another forward/backward, so one pass serves several projections."""
        s = self.config.side
        vecs = torch.zeros(factors.n, self.dims)
        with torch.no_grad():
            for i, name in enumerate(self.layer_names):
                p_out, p_in = self.p_out[name].to(vecs.device), self.p_in[name].to(vecs.device)
                for x, y, rows in zip(factors.xs[i], factors.ys[i], factors.rows, strict=True):
                    a = y.float() @ p_out.T  # (B, T, s)
                    b = x.float() @ p_in.T
                    vecs[rows, i * s * s : (i + 1) * s * s] = torch.einsum("bto,bti->boi", a, b).reshape(-1, s * s)
        return vecs.numpy()

    def _batch(
        self, batch: dict[str, torch.Tensor], keep_factors: bool = False
    ) -> tuple[np.ndarray, Any, tuple[list[torch.Tensor], list[torch.Tensor]] | None]:
        """Projected vectors `(B, D)`, the loss output and, with `keep_factors`, every tracked layer's
        raw inputs `(B, T_l, in)` and output gradients `(B, T_l, out)` in layer order."""

        def keep(i: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
            # projected at once, (B, T, s); the raw input only when the factors are kept
            return x.float() @ self.p_in[self.layer_names[i]].T, x if keep_factors else None

        kept, grads, out = forward_backward(self.model, self.task, self.layers, batch, keep)
        bsz = batch["input_ids"].shape[0]
        s = self.config.side
        raw = batch_factors(self.layers, bsz, {i: x for i, (_, x) in kept.items()}, grads) if keep_factors else None
        with torch.no_grad():
            parts = []
            for i, name in enumerate(self.layer_names):
                if i not in grads:  # layer not on the loss path: zero gradient
                    parts.append(torch.zeros(bsz, s * s, device=self.device))
                    continue
                d_out = grads[i]
                a = d_out.reshape(bsz, -1, d_out.shape[-1]).float() @ self.p_out[name].T  # (B, T, s)
                b = kept[i][0].reshape(bsz, -1, s).float()
                parts.append(torch.einsum("bto,bti->boi", a, b).reshape(bsz, s * s))
            vecs = torch.cat(parts, dim=1).cpu().numpy()
        return vecs, out, raw


class ReferenceFeaturizer(_Projected):
    """Slow oracle: per-example full weight gradients by autograd, then the projection."""

    def featurize(
        self, examples: Sequence[Example], progress: ProgressFn | None = None, *, keep_factors: bool = False
    ) -> FeatureBatch:
        """The projected vectors (`keep_factors` is not supported here: no factors are kept)."""
        rows, losses, predictions, truncated = [], [], [], []
        weights = [m.weight for _, m in self.layers]
        for example in examples:
            enc = self.task.encode(example)
            batch = {k: v.to(self.device) for k, v in self.task.collate([enc]).items()}
            with torch.enable_grad():
                out = self.task.per_example_loss(self.model, batch)
                grads = torch.autograd.grad(out.losses.sum(), weights, allow_unused=True)
            parts = []
            for (name, layer), g in zip(self.layers, grads, strict=True):
                full = torch.zeros_like(layer.weight) if g is None else g
                parts.append((self.p_out[name] @ full.float() @ self.p_in[name].T).reshape(-1))
            rows.append(torch.cat(parts).detach().cpu().numpy())
            losses.append(float(out.losses[0].detach()))
            predictions.append(out.predictions[0])
            truncated.append(enc.truncated)
            if progress is not None:
                progress(1)
        return FeatureBatch(np.stack(rows).astype(np.float32), losses, predictions, truncated)
