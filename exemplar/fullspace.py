"""Exact inner products of a few examples' loss gradients in the model's own space.

The index retrieves with projected gradients (`exemplar.gradients`); the score of the
handful of examples one explanation returns is computed here on their FULL gradients
w.r.t. the tracked weights, which is the space the paper defines the score in. Nothing
holds a full gradient of all layers at once: layer by layer, for tracked `nn.Linear`
weights with per-example inputs `X_i: (T_i, in)` and output gradients `dY_i: (T_i, out)`
(the gradient is `G_i = dY_i^T X_i: (out, in)`), one of two exact forms, whichever costs
fewer multiply-adds for that layer (`N` real tokens of `n` examples):

- "dense": materialise this layer's `G_i` for the `n` examples, take `G G^T`, discard
  (`N in out + n^2 in out`);
- "tokens": `<G_i, G_j> = sum_{t, t'} (x_it . x_jt') (dy_it . dy_jt')` from the two token
  kernels (`N^2 (in + out)`), best when tokens are few and layers wide.

Coordinate sums (for the variance's mean term) are `sum(G_i) = sum_t (1 . dy_it)(1 . x_it)`.
Products run in float64 (the score subtracts nearly equal quantities when a selection
reconstructs the query well); padding tokens are dropped.

Implementations of `GramComputer`:
- `KroneckerGram`: the production path: batched forward/backward passes with module hooks,
  examples processed in chunks of at most `max_tokens` tokens (two chunks held at a time,
  so memory is bounded whatever the number of examples).
- `ReferenceGram`: the slow oracle: per example, the full weight gradients by autograd,
  flattened, and their float64 inner products.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from exemplar.errors import InvalidInputError
from exemplar.tasks import Encoded, Example, Task

MAX_CHUNK_TOKENS = 4096
"""Real tokens per chunk of examples whose layer inputs and output gradients are held at once."""

DENSE_MAX_ELEMENTS = 32 * 1024 * 1024
"""The "dense" form is used only while `n * in * out` stays below this (256 MiB of float64)."""


@dataclass(frozen=True)
class FullGram:
    """Full-space Gram matrix of `n` examples' loss gradients over the `dims` tracked weights.

    `gram: (n, n)` float64 `<G_i, G_j>`, `sums: (n,)` float64 coordinate sums of `G_i`,
    `losses: (n,)` each example's loss.
    """

    gram: np.ndarray
    sums: np.ndarray
    dims: int
    losses: np.ndarray


class GramComputer(Protocol):
    """Computes `FullGram` of a few examples for one model and task."""

    dims: int

    def gram(self, examples: Sequence[Example]) -> FullGram: ...


def _layer_dims(layers: Sequence[tuple[str, torch.nn.Linear]]) -> int:
    return int(sum(m.in_features * m.out_features for _, m in layers))


@dataclass
class _Factors:
    """One chunk's per-layer token inputs `xs[l]: (N_l, in)`, output gradients `ys[l]: (N_l, out)`
    and the example each token belongs to, `segments[l]: (N_l,)` (positions within the chunk);
    only tokens with a non-zero output gradient are kept."""

    xs: list[torch.Tensor]
    ys: list[torch.Tensor]
    segments: list[torch.Tensor]
    n: int
    losses: list[float]


def _cross(a: _Factors, b: _Factors, layer: int, shapes: tuple[int, int]) -> torch.Tensor:
    """`(a.n, b.n)` float64 inner products of the two chunks' gradients at one layer."""
    xa, ya, xb, yb = a.xs[layer], a.ys[layer], b.xs[layer], b.ys[layer]
    sa, sb = a.segments[layer], b.segments[layer]
    d_in, d_out = shapes
    na, nb, ta, tb = a.n, b.n, xa.shape[0], xb.shape[0]
    tokens_cost = ta * tb * (d_in + d_out)
    dense_cost = (ta + tb) * d_in * d_out + na * nb * d_in * d_out
    if dense_cost < tokens_cost and (na + nb) * d_in * d_out <= DENSE_MAX_ELEMENTS:
        return _dense(xa, ya, sa, na) @ _dense(xb, yb, sb, nb).T
    kernel = (xa @ xb.T) * (ya @ yb.T)  # (ta, tb)
    rows = torch.zeros(na, tb, dtype=torch.float64).index_add_(0, sa, kernel)
    return torch.zeros(na, nb, dtype=torch.float64).index_add_(1, sb, rows)


def _dense(x: torch.Tensor, y: torch.Tensor, segment: torch.Tensor, n: int) -> torch.Tensor:
    """`(n, out * in)` per-example gradients `sum_t dy_t x_t^T` of one layer."""
    out = torch.zeros(n, y.shape[1], x.shape[1], dtype=torch.float64)
    for i in range(n):
        mask = segment == i
        out[i] = y[mask].T @ x[mask]
    return out.reshape(n, -1)


class KroneckerGram:
    """Batched exact Gram (module docstring); the model, task and layers of a featuriser."""

    def __init__(
        self,
        model: torch.nn.Module,
        task: Task,
        layers: Sequence[tuple[str, torch.nn.Linear]],
        *,
        batches: Callable[[Sequence[Encoded]], list[list[int]]],
        max_chunk_tokens: int = MAX_CHUNK_TOKENS,
    ) -> None:
        self.model, self.task, self.layers = model, task, list(layers)
        self.batches = batches
        self.max_chunk_tokens = max_chunk_tokens
        self.dims = _layer_dims(self.layers)
        self.shapes = [(m.in_features, m.out_features) for _, m in self.layers]

    def gram(self, examples: Sequence[Example]) -> FullGram:
        if not examples:
            raise InvalidInputError("the full-space Gram needs at least one example")
        encoded = [self.task.encode(e) for e in examples]
        chunks = self._chunks(encoded)
        n = len(examples)
        gram = np.zeros((n, n))
        sums = np.zeros(n)
        losses = np.zeros(n)
        for ci, rows_i in enumerate(chunks):
            fi = self._factors([encoded[r] for r in rows_i])
            losses[rows_i] = fi.losses
            sums[rows_i] = self._sums(fi)
            gram[np.ix_(rows_i, rows_i)] = self._block(fi, fi)
            for rows_j in chunks[ci + 1 :]:  # bounded memory: recompute the later chunk
                block = self._block(fi, self._factors([encoded[r] for r in rows_j]))
                gram[np.ix_(rows_i, rows_j)] = block
                gram[np.ix_(rows_j, rows_i)] = block.T
        return FullGram(gram=(gram + gram.T) / 2, sums=sums, dims=self.dims, losses=losses)

    def _chunks(self, encoded: Sequence[Encoded]) -> list[list[int]]:
        chunks: list[list[int]] = []
        current: list[int] = []
        tokens = 0
        for i, e in enumerate(encoded):
            width = len(e.input_ids)
            if current and tokens + width > self.max_chunk_tokens:
                chunks.append(current)
                current, tokens = [], 0
            current.append(i)
            tokens += width
        chunks.append(current)
        return chunks

    def _block(self, a: _Factors, b: _Factors) -> np.ndarray:
        total = torch.zeros(a.n, b.n, dtype=torch.float64)
        for layer, shapes in enumerate(self.shapes):
            total += _cross(a, b, layer, shapes)
        return total.numpy()

    def _sums(self, f: _Factors) -> np.ndarray:
        out = torch.zeros(f.n, dtype=torch.float64)
        for x, y, seg in zip(f.xs, f.ys, f.segments, strict=True):
            out.index_add_(0, seg, x.sum(dim=1) * y.sum(dim=1))
        return out.numpy()

    def _pass(self, batch: dict[str, torch.Tensor]) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor], Any]:
        """One forward/backward: each tracked layer's input and output gradient (by layer position)."""
        inputs: dict[int, torch.Tensor] = {}
        outputs: dict[int, torch.Tensor] = {}

        def hook(index: int) -> Callable[..., None]:
            def record(module: torch.nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
                inputs[index] = args[0].detach()
                outputs[index] = output

            return record

        handles = [m.register_forward_hook(hook(i)) for i, (_, m) in enumerate(self.layers)]
        try:
            with torch.enable_grad():
                out = self.task.per_example_loss(self.model, batch)
                seen = sorted(outputs)
                grads = torch.autograd.grad(out.losses.sum(), [outputs[i] for i in seen], allow_unused=True)
        finally:
            for h in handles:
                h.remove()
        return inputs, {i: g for i, g in zip(seen, grads, strict=True) if g is not None}, out

    def _factors(self, encoded: Sequence[Encoded]) -> _Factors:
        """One forward/backward per batch; real tokens only, float64."""
        n_layers = len(self.layers)
        xs: list[list[torch.Tensor]] = [[] for _ in range(n_layers)]
        ys: list[list[torch.Tensor]] = [[] for _ in range(n_layers)]
        segs: list[list[torch.Tensor]] = [[] for _ in range(n_layers)]
        losses = [0.0] * len(encoded)
        for group in self.batches(encoded):
            batch = self.task.collate([encoded[i] for i in group])
            inputs, grad_of, out = self._pass(batch)
            bsz = batch["input_ids"].shape[0]
            rows = torch.tensor(group, dtype=torch.long)
            for i, (_, layer) in enumerate(self.layers):
                d_out = grad_of.get(i)
                if d_out is None:  # layer not on the loss path (or never run): zero gradient
                    continue
                # tokens whose output gradient is zero (padding, prompt positions of a causal
                # LM's head, ...) add nothing to G = sum_t dy_t x_t^T: drop them
                y = d_out.reshape(-1, layer.out_features)  # (B * T_l, out)
                keep = (y != 0).any(dim=1)
                xs[i].append(inputs[i].reshape(-1, layer.in_features)[keep].double())
                ys[i].append(y[keep].double())
                segs[i].append(rows.repeat_interleave(y.shape[0] // bsz)[keep])
            for j, i in enumerate(group):
                losses[i] = float(out.losses[j].detach())
        empty = torch.zeros(0, dtype=torch.long)
        return _Factors(
            xs=[
                torch.cat(x) if x else torch.zeros(0, m.in_features, dtype=torch.float64)
                for x, (_, m) in zip(xs, self.layers, strict=True)
            ],
            ys=[
                torch.cat(y) if y else torch.zeros(0, m.out_features, dtype=torch.float64)
                for y, (_, m) in zip(ys, self.layers, strict=True)
            ],
            segments=[torch.cat(s) if s else empty for s in segs],
            n=len(encoded),
            losses=losses,
        )


class ReferenceGram:
    """Slow oracle: per-example full weight gradients by autograd, float64 inner products."""

    def __init__(self, model: torch.nn.Module, task: Task, layers: Sequence[tuple[str, torch.nn.Linear]]) -> None:
        self.model, self.task, self.layers = model, task, list(layers)
        self.dims = _layer_dims(self.layers)

    def gradients(self, examples: Sequence[Example]) -> tuple[np.ndarray, np.ndarray]:
        """`(n, dims)` float64 full gradients (layer by layer, flattened) and `(n,)` losses."""
        weights = [m.weight for _, m in self.layers]
        rows, losses = [], []
        for example in examples:
            batch = self.task.collate([self.task.encode(example)])
            with torch.enable_grad():
                out = self.task.per_example_loss(self.model, batch)
                grads = torch.autograd.grad(out.losses.sum(), weights, allow_unused=True)
            parts = [
                (torch.zeros_like(w) if g is None else g).detach().double().reshape(-1)
                for w, g in zip(weights, grads, strict=True)
            ]
            rows.append(torch.cat(parts).numpy())
            losses.append(float(out.losses[0].detach()))
        return np.stack(rows), np.asarray(losses)

    def gram(self, examples: Sequence[Example]) -> FullGram:
        full, losses = self.gradients(examples)
        return FullGram(gram=full @ full.T, sums=full.sum(axis=1), dims=self.dims, losses=losses)
