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
Each layer's products run in `dtype`, float64 by default: the paper's solver inverts the
Gram's eigenvalues down to its truncation threshold, and float32 products (about twice as
fast) moved its score by 0.13 dB from the materialised gradients' (tests/test_explain.py's
full-space check for DIVINE on the tiny classifier index, run with `dtype=torch.float32`);
the sum over layers is float64. Padded tokens have a zero output gradient and add nothing.

Implementations of `GramComputer`:
- `KroneckerGram`: the production path: batched forward/backward passes with module hooks,
  examples in chunks of at most `max_tokens` tokens (two held at a time: bounded memory).
- `ReferenceGram`: the slow oracle: per example, the full weight gradients by autograd,
  flattened, and their float64 inner products.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import numpy as np
import torch

from exemplar.errors import InvalidInputError
from exemplar.relevance import Relevance, gram_relevance
from exemplar.tasks import Encoded, Example, LossOutput, Task
from exemplar.threads import Hold, checkpoint, per_hold

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

    def relevance(self, solver: str = "paper") -> Relevance:
        """The score of examples `1..n-1` as a selection for the query at position 0."""
        return gram_relevance(
            self.gram[1:, 1:],
            self.gram[1:, 0],
            float(self.gram[0, 0]),
            self.sums[1:],
            float(self.sums[0]),
            self.dims,
            solver,
        )

    def subset(self, positions: Sequence[int]) -> FullGram:
        """The Gram of the examples at `positions` only, in that order (position 0 first keeps the
        query first): one Gram of a union scores each of its selections."""
        idx = np.asarray(positions, dtype=np.int64)
        return FullGram(self.gram[np.ix_(idx, idx)], self.sums[idx], self.dims, self.losses[idx])


class GramComputer(Protocol):
    """Computes `FullGram` of a few examples for one model and task."""

    dims: int

    def gram(self, examples: Sequence[Example]) -> FullGram: ...


def _layer_dims(layers: Sequence[tuple[str, torch.nn.Linear]]) -> int:
    return int(sum(m.in_features * m.out_features for _, m in layers))


@dataclass
class LayerFactors:
    """One chunk's tracked-layer inputs and output gradients, as the forward/backward passes left
    them: per layer `l` and batch `b`, `xs[l][b]: (B, T_l, in)` and `ys[l][b]: (B, T_l, out)`
    (padded; a padded token's output gradient is zero, so it adds nothing), and `rows[b]: (B,)`
    the batch's positions within the chunk."""

    xs: list[list[torch.Tensor]]
    ys: list[list[torch.Tensor]]
    rows: list[torch.Tensor]
    n: int
    losses: list[float]
    real: dict[tuple[int, torch.dtype], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(
        default_factory=dict, repr=False
    )  # `_real_tokens` by (layer, dtype), computed once per chunk

    @classmethod
    def of_example(cls, xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor], j: int, loss: float) -> LayerFactors:
        """Example `j`'s factors from one batch's per-layer `xs[l]: (B, T_l, in)`, `ys[l]: (B, T_l, out)`."""
        return cls(
            xs=[[x[j : j + 1]] for x in xs],
            ys=[[y[j : j + 1]] for y in ys],
            rows=[torch.zeros(1, dtype=torch.long)],
            n=1,
            losses=[loss],
        )

    def tokens(self, layer: int) -> int:
        return sum(x.shape[0] * x.shape[1] for x in self.xs[layer])


def _dense(f: LayerFactors, layer: int, dtype: torch.dtype) -> torch.Tensor:
    """`(n, out * in)` this layer's per-example gradients `sum_t dy_t x_t^T`."""
    first = f.xs[layer][0] if f.xs[layer] else None
    if first is None:
        return torch.zeros(f.n, 0, dtype=dtype)
    out = torch.zeros(f.n, f.ys[layer][0].shape[-1] * first.shape[-1], dtype=dtype)
    for x, y, rows in zip(f.xs[layer], f.ys[layer], f.rows, strict=True):
        checkpoint()  # one batch's products at a time: light requests go first between them
        out[rows] = torch.bmm(y.transpose(1, 2).to(dtype), x.to(dtype)).reshape(x.shape[0], -1)
    return out


def _real_tokens(f: LayerFactors, layer: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """This layer's tokens with a non-zero output gradient (the others add nothing): inputs
    `(N, in)`, output gradients `(N, out)` in `dtype`, and each token's position in the chunk `(N,)`."""
    if (layer, dtype) in f.real:
        return f.real[layer, dtype]
    for (cached_layer, _), (x, y, seg) in list(f.real.items()):
        if cached_layer == layer:  # another precision of the same tokens
            f.real[layer, dtype] = (x.to(dtype), y.to(dtype), seg)
            return f.real[layer, dtype]
    xs, ys, segs = [], [], []
    for x, y, rows in zip(f.xs[layer], f.ys[layer], f.rows, strict=True):
        flat_y = y.reshape(-1, y.shape[-1])
        keep = (flat_y != 0).any(dim=1)
        xs.append(x.reshape(-1, x.shape[-1])[keep].to(dtype))
        ys.append(flat_y[keep].to(dtype))
        segs.append(rows.repeat_interleave(y.shape[1])[keep])
    f.real[layer, dtype] = (torch.cat(xs), torch.cat(ys), torch.cat(segs))
    return f.real[layer, dtype]


DENSE_PENALTY = 3.0
"""The dense form writes and reads `n * in * out` values per layer and runs memory-bound; its
multiply-adds count this many times in the choice of form (measured on the tweets demo, 2 cores)."""


def _cross(
    a: LayerFactors,
    b: LayerFactors,
    layer: int,
    shapes: tuple[int, int],
    dtype: torch.dtype,
    max_elements: int = DENSE_MAX_ELEMENTS,
) -> torch.Tensor:
    """`(a.n, b.n)` inner products of the two chunks' gradients at one layer, in the cheaper form."""
    d_in, d_out = shapes
    same = a is b
    xa, ya, sa = _real_tokens(a, layer, dtype)
    xb, yb, sb = (xa, ya, sa) if same else _real_tokens(b, layer, dtype)
    tokens_cost = xa.shape[0] * xb.shape[0] * (d_in + d_out)
    padded = a.tokens(layer) + (0 if same else b.tokens(layer))
    dense_cost = DENSE_PENALTY * (padded + a.n * b.n) * d_in * d_out
    if dense_cost < tokens_cost and (a.n + b.n) * d_in * d_out <= max_elements:
        da = _dense(a, layer, dtype)
        return da @ (da if same else _dense(b, layer, dtype)).T
    return _token_products(xa, ya, sa, a.n, xb, yb, sb, b.n)


def _token_products(
    xa: torch.Tensor,
    ya: torch.Tensor,
    sa: torch.Tensor,
    na: int,
    xb: torch.Tensor,
    yb: torch.Tensor,
    sb: torch.Tensor,
    nb: int,
) -> torch.Tensor:
    """`(na, nb)` gradient inner products from real tokens (inputs `x`, output gradients `y`, each
    token's example `s`): `sum_{t, t'} (x_t . x_t') (dy_t . dy_t')` over each pair of examples."""
    kernel = (xa @ xb.T) * (ya @ yb.T)  # (Na, Nb)
    rows = torch.zeros(na, kernel.shape[1], dtype=kernel.dtype).index_add_(0, sa, kernel)
    return torch.zeros(na, nb, dtype=kernel.dtype).index_add_(1, sb, rows)


def forward_backward(
    model: torch.nn.Module,
    task: Task,
    layers: Sequence[tuple[str, torch.nn.Linear]],
    batch: dict[str, torch.Tensor],
    on_input: Callable[[int, torch.Tensor], Any],
) -> tuple[dict[int, Any], dict[int, torch.Tensor], LossOutput]:
    """One forward and one backward of `batch` with hooks on `layers`: what `on_input(i, x)` keeps of
    layer `i`'s (detached) input, and the summed loss's gradient w.r.t. each layer's output (a layer
    missing from it is not on the loss path). No parameter `.grad` is touched."""
    kept: dict[int, Any] = {}
    outputs: dict[int, torch.Tensor] = {}

    def hook(index: int) -> Callable[..., None]:
        def record(module: torch.nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            kept[index] = on_input(index, args[0].detach())
            outputs[index] = output

        return record

    batch = {k: v.to(next(model.parameters()).device) for k, v in batch.items()}
    handles = [m.register_forward_hook(hook(i)) for i, (_, m) in enumerate(layers)]
    try:
        with torch.enable_grad():
            out = task.per_example_loss(model, batch)
            seen = sorted(outputs)
            grads = torch.autograd.grad(out.losses.sum(), [outputs[i] for i in seen], allow_unused=True)
    finally:
        for h in handles:
            h.remove()
    return kept, {i: g for i, g in zip(seen, grads, strict=True) if g is not None}, out


def batch_factors(
    layers: Sequence[tuple[str, torch.nn.Linear]],
    bsz: int,
    inputs: dict[int, torch.Tensor],
    grads: dict[int, torch.Tensor],
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per layer, in order, one batch's inputs `(B, T_l, in)` and output gradients `(B, T_l, out)`, float32
    on the CPU (any model precision, device); a layer off the loss path gets zeros."""
    xs, ys = [], []
    for i, (_, layer) in enumerate(layers):
        if i in grads:
            xs.append(inputs[i].reshape(bsz, -1, layer.in_features).float().cpu())
            ys.append(grads[i].detach().reshape(bsz, -1, layer.out_features).float().cpu())
        else:
            xs.append(torch.zeros(bsz, 1, layer.in_features))
            ys.append(torch.zeros(bsz, 1, layer.out_features))
    return xs, ys


def _given(factors: LayerFactors) -> LayerFactors:
    return factors


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
        dense_max_elements: int = DENSE_MAX_ELEMENTS,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        self.model, self.task, self.layers = model, task, list(layers)
        self.batches = batches
        self.max_chunk_tokens = max_chunk_tokens
        self.dense_max_elements = dense_max_elements
        self.dtype = dtype
        self.dims = _layer_dims(self.layers)
        self.shapes = [(m.in_features, m.out_features) for _, m in self.layers]

    def gram(self, examples: Sequence[Example], prefix: LayerFactors | None = None) -> FullGram:
        """The Gram of `examples`; with `prefix` (factors an earlier pass kept, such as the query's
        from its featurisation: `KroneckerFeaturizer.featurize(keep_factors=True)`) its examples
        come first, at positions `0 .. prefix.n - 1`, and are not recomputed."""
        p = prefix.n if prefix is not None else 0
        if p + len(examples) == 0:
            raise InvalidInputError("the full-space Gram needs at least one example")
        encoded = [self.task.encode(e) for e in examples]
        chunks: list[tuple[list[int], Callable[[], LayerFactors]]] = []
        if prefix is not None:
            chunks.append((list(range(p)), partial(_given, prefix)))
        for rows in self._chunks(encoded) if encoded else []:
            chunks.append(([p + r for r in rows], partial(self._factors, [encoded[r] for r in rows])))
        return self._assemble(chunks, p + len(examples))

    def subset_grams(
        self,
        examples: Sequence[Example],
        subsets: Sequence[Sequence[int]],
        prefix: LayerFactors | None = None,
        model: Hold = contextlib.nullcontext,
    ) -> list[FullGram]:
        """The Gram of each subset (distinct positions in `examples`), `prefix` first in each, from
        ONE forward/backward of `examples`: overlapping subsets share the passes, only each subset's
        own pairs are multiplied (`_within`), the prefix's products with the examples once. Above
        `max_chunk_tokens` tokens in all, each subset is computed on its own (`gram`, chunked): bounded
        memory. `model` guards the tokenisation and each batch's forward/backward; the products
        run outside it, with `checkpoint`s per layer and per subset."""
        with model():
            encoded = [self.task.encode(e) for e in examples]
            if sum(len(e.input_ids) for e in encoded) > self.max_chunk_tokens:
                return [self.gram([examples[j] for j in subset], prefix=prefix) for subset in subsets]
        f = self._factors(encoded, hold=model)  # the model held batch by batch: short holds
        index = [torch.tensor(list(subset), dtype=torch.long) for subset in subsets]
        p = prefix.n if prefix is not None else 0
        pp = torch.zeros(p, p, dtype=torch.float64)
        pf = torch.zeros(p, f.n, dtype=torch.float64)
        within = [torch.zeros(len(i), len(i), dtype=torch.float64) for i in index]
        for layer, shapes in enumerate(self.shapes):
            checkpoint()
            if prefix is not None:
                pp += _cross(prefix, prefix, layer, shapes, self.dtype, self.dense_max_elements).double()
                pf += _cross(prefix, f, layer, shapes, self.dtype, self.dense_max_elements).double()
            for total, block in zip(within, self._within(f, index, layer, shapes), strict=True):
                total += block.double()
        sums_p = self._sums(prefix) if prefix is not None else np.zeros(0)
        losses_p = np.asarray(prefix.losses if prefix is not None else [], dtype=np.float64)
        sums_f, losses_f = self._sums(f), np.asarray(f.losses, dtype=np.float64)
        out = []
        for i, block in zip(index, within, strict=True):
            n = p + len(i)
            gram = np.zeros((n, n))
            gram[:p, :p] = pp.numpy()
            gram[:p, p:] = pf[:, i].numpy()
            gram[p:, :p] = gram[:p, p:].T
            gram[p:, p:] = block.numpy()
            out.append(
                FullGram(
                    gram=(gram + gram.T) / 2,
                    sums=np.concatenate([sums_p, sums_f[i.numpy()]]),
                    dims=self.dims,
                    losses=np.concatenate([losses_p, losses_f[i.numpy()]]),
                )
            )
        return out

    def _within(
        self, f: LayerFactors, index: Sequence[torch.Tensor], layer: int, shapes: tuple[int, int]
    ) -> Iterator[torch.Tensor]:
        """Per subset (positions `index[s]` in `f`, one at a time, a `checkpoint` before each), its
        `(|S|, |S|)` gradient inner products at one layer, in the cheaper form over all subsets:
        dense gradients once and each subset's products (`tokens * in * out + sum |S|^2 in out`, while
        `f.n * in * out` fits `dense_max_elements`), or each subset's token kernel (`sum N_S^2 (in + out)`)."""
        (d_in, d_out), (x, y, seg) = shapes, _real_tokens(f, layer, self.dtype)
        counts = torch.bincount(seg, minlength=f.n)
        tokens_cost = sum(int(counts[i].sum()) ** 2 for i in index) * (d_in + d_out)
        dense_cost = DENSE_PENALTY * (f.tokens(layer) + sum(len(i) ** 2 for i in index)) * d_in * d_out
        dense_form = dense_cost < tokens_cost and f.n * d_in * d_out <= self.dense_max_elements
        dense = _dense(f, layer, self.dtype) if dense_form else None
        where = torch.full((f.n,), -1, dtype=torch.long)
        for i in index:
            checkpoint()
            if dense is not None:
                yield dense[i] @ dense[i].T
                continue
            where.fill_(-1)
            where[i] = torch.arange(len(i))
            local = where[seg]
            keep = local >= 0
            xs, ys, rows = x[keep], y[keep], local[keep]
            yield _token_products(xs, ys, rows, len(i), xs, ys, rows, len(i))

    def _assemble(self, chunks: Sequence[tuple[list[int], Callable[[], LayerFactors]]], n: int) -> FullGram:
        """The Gram of chunks of examples given as (positions, how to get their factors)."""
        gram = np.zeros((n, n))
        sums = np.zeros(n)
        losses = np.zeros(n)
        carried: LayerFactors | None = None  # the next chunk, when the last cross block computed it
        for ci, (rows_i, make_i) in enumerate(chunks):
            fi = carried if carried is not None else make_i()
            carried = None
            losses[rows_i] = fi.losses
            sums[rows_i] = self._sums(fi)
            gram[np.ix_(rows_i, rows_i)] = self._block(fi, fi)
            # bounded memory: two chunks at a time, later ones recomputed; the nearest last, to carry it
            for rows_j, make_j in reversed(chunks[ci + 1 :]):
                carried = make_j()
                block = self._block(fi, carried)
                gram[np.ix_(rows_i, rows_j)] = block
                gram[np.ix_(rows_j, rows_i)] = block.T
        return FullGram(gram=(gram + gram.T) / 2, sums=sums, dims=self.dims, losses=losses)

    def factors(self, examples: Sequence[Example]) -> LayerFactors:
        """The layer inputs and output gradients of `examples` (one chunk, whatever its size)."""
        return self._factors([self.task.encode(e) for e in examples])

    def cross(
        self, fixed: LayerFactors, examples: Sequence[Example], progress: Callable[[int], None] | None = None
    ) -> np.ndarray:
        """`(fixed.n, len(examples))` full-space inner products of `fixed`'s examples with each of
        `examples`, streamed chunk by chunk: each example's full gradient is never held beyond its
        chunk (for scans of a whole training set, `benchmarks/fidelity.py`)."""
        out = np.zeros((fixed.n, len(examples)))
        for rows, chunk in self.stream(examples):
            out[:, rows] = self.cross_factors(fixed, chunk)
            if progress is not None:
                progress(len(rows))
        return out

    def cross_factors(self, a: LayerFactors, b: LayerFactors) -> np.ndarray:
        """`(a.n, b.n)` full-space inner products of two sets of kept factors (`b` used once)."""
        return self._block(a, b, keep_b=False)

    def stream(self, examples: Sequence[Example]) -> Iterator[tuple[list[int], LayerFactors]]:
        """`examples`' layer factors chunk by chunk, as (positions in `examples`, factors): one chunk
        is alive at a time when the caller lets go of the last one."""
        encoded = [self.task.encode(e) for e in examples]
        for rows in self._chunks(encoded) if encoded else []:
            yield rows, self._factors([encoded[r] for r in rows])

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

    def _block(self, a: LayerFactors, b: LayerFactors, *, keep_b: bool = True) -> np.ndarray:
        """`(a.n, b.n)` inner products summed over layers; `keep_b=False` drops `b`'s real-token
        copies layer by layer (a chunk used once: they would double its memory)."""
        total = torch.zeros(a.n, b.n, dtype=torch.float64)
        for layer, shapes in enumerate(self.shapes):
            total += _cross(a, b, layer, shapes, self.dtype, self.dense_max_elements).double()
            if not keep_b:
                for key in [key for key in b.real if key[0] == layer]:
                    del b.real[key]
        return total.numpy()

    def _sums(self, f: LayerFactors) -> np.ndarray:
        out = torch.zeros(f.n, dtype=torch.float64)
        for xs, ys in zip(f.xs, f.ys, strict=True):
            for x, y, rows in zip(xs, ys, f.rows, strict=True):
                out[rows] += (x.sum(dim=-1, dtype=torch.float64) * y.sum(dim=-1, dtype=torch.float64)).sum(dim=-1)
        return out.numpy()

    def _factors(self, encoded: Sequence[Encoded], hold: Hold = contextlib.nullcontext) -> LayerFactors:
        """One forward/backward per batch (of at most `rows_per_hold` examples, each inside its own
        `hold()`: the caller's model lock); what each tracked layer saw and got back, kept as it is."""
        xs: list[list[torch.Tensor]] = [[] for _ in self.layers]
        ys: list[list[torch.Tensor]] = [[] for _ in self.layers]
        rows: list[torch.Tensor] = []
        losses = [0.0] * len(encoded)
        for group in per_hold(self.batches(encoded)):
            batch = self.task.collate([encoded[i] for i in group])
            with hold():
                inputs, grads, out = forward_backward(self.model, self.task, self.layers, batch, lambda i, x: x)
            batch_xs, batch_ys = batch_factors(self.layers, len(group), inputs, grads)
            for i in range(len(self.layers)):
                xs[i].append(batch_xs[i])
                ys[i].append(batch_ys[i])
            rows.append(torch.tensor(group, dtype=torch.long))
            for j, i in enumerate(group):
                losses[i] = float(out.losses[j].detach())
        return LayerFactors(xs=xs, ys=ys, rows=rows, n=len(encoded), losses=losses)


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
