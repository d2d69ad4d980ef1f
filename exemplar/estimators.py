"""Influence estimators: how much a training example `z` matters for a query `x'`.

Sign convention (Koh & Liang, paper.md section 2): `I(z, x') < 0` means up-weighting `z`
lowers the query's loss (helpful), `> 0` harmful. Implementations (registry `ESTIMATORS`):

- `GradDot` ("grad_dot", the paper's "LESS"): `I = -<g_z, g'>`, unbounded, in squared
  gradient units.
- `GradCos` ("grad_cos"): `I = -cos(g_z, g')`, in [-1, 1].
- `DataInf` ("datainf", Kwon et al. 2024): per layer block `l` of dimension `p`,
  `lambda_l = 0.1 * mean_i ||g_il||^2 / p` and
  `M_l = (1/lambda_l) (Id - 1/n sum_i g_il g_il^T / (lambda_l + ||g_il||^2))`, so that
  `I = -sum_l g_zl . M_l g'_l` (`h_l = M_l v_l` in paper.md). `M` is precomputed at build
  time (`datainf.npy`, `(L, p, p)`), so a query is one inner-product search with `M g'`.
- `BM25` ("bm25", lexical, not gradient): Okapi BM25 over the model tokenizer's ids with
  `k1 = 1.5`, `b = 0.75`, `idf = ln((N - df + 0.5)/(df + 0.5) + 1)`, summed over the distinct
  query terms, textbook Okapi scale (bm25s "lucene" scores times `k1 + 1`). A similarity `>= 0`: "most influential" = highest score; the helpful and
  harmful orderings do not apply.
- `TracIn` ("tracin", Pruthi et al. 2020): `I = -sum_c lr_c <g_z^c, g'^c>` over the
  checkpoints the index was built from (`index-builder build --checkpoint DIR=LR ...`), in
  learning-rate-weighted squared gradient units; negative = helpful.

Every estimator can score given rows exactly (`influence`) and the whole store by a chunked
scan (`scan`); the linear ones also give a FAISS query vector (`search_vector`) with
`I(z) = -<v_z, q>`, so proponents and opponents come from two inner-product searches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Self

import numpy as np

from exemplar.errors import InvalidInputError
from exemplar.search import scan_inner_products
from exemplar.store import GradientStore, checkpoint_file

DATAINF_FILE = "datainf.npy"
BM25_DIR = "bm25"


@dataclass
class Query:
    """What estimators see of a query: its projected gradient and its content token ids."""

    grad: np.ndarray
    token_ids: list[int] = field(default_factory=list)
    checkpoint_grads: list[np.ndarray] | None = None  # TracIn: the query's gradient under each checkpoint


class Estimator(Protocol):
    """Influence of stored training examples on one query."""

    name: str
    signed: bool  # False: a similarity, the helpful/harmful orderings do not apply

    def influence(self, store: GradientStore, query: Query, rows: np.ndarray) -> np.ndarray: ...

    def scan(self, store: GradientStore, query: Query) -> np.ndarray: ...

    def search_vector(self, query: Query) -> np.ndarray | None: ...


class EstimatorKind(Protocol):
    """A registered estimator class: its name, how a client sees it, and how to open it over a store."""

    name: str
    label: str  # for people (the web page)
    summary: str  # one sentence: what the number means
    signed: bool

    def available(self, store: GradientStore) -> bool: ...

    def open(self, store: GradientStore) -> Estimator: ...


class _VectorsOnly:
    """Estimators that need nothing but the stored vectors: always available, nothing to open."""

    @classmethod
    def available(cls, store: GradientStore) -> bool:
        return True

    @classmethod
    def open(cls, store: GradientStore) -> Self:
        return cls()


class GradDot(_VectorsOnly):
    """`I = -<g_z, g'>`."""

    name = "grad_dot"
    label = "Grad-Dot"
    summary = "Dot product of loss gradients (the paper's default). Negative influence = helpful."
    signed = True

    def search_vector(self, query: Query) -> np.ndarray:
        return np.asarray(query.grad, dtype=np.float32)

    def influence(self, store: GradientStore, query: Query, rows: np.ndarray) -> np.ndarray:
        return -(store.vectors_at(rows) @ self.search_vector(query))

    def scan(self, store: GradientStore, query: Query) -> np.ndarray:
        return -scan_inner_products(store.vectors, self.search_vector(query))


class GradCos(_VectorsOnly):
    """`I = -cos(g_z, g')` (zero vectors have cosine 0)."""

    name = "grad_cos"
    label = "Grad-Cos"
    summary = "Cosine of loss gradients: ignores how large the gradients are. Negative = helpful."
    signed = True

    def search_vector(self, query: Query) -> None:
        return None  # not an inner product with the stored vectors: scanned

    def _unit_query(self, query: Query) -> np.ndarray:
        norm = float(np.linalg.norm(query.grad))
        return np.asarray(query.grad / norm if norm > 0 else query.grad, dtype=np.float32)

    def influence(self, store: GradientStore, query: Query, rows: np.ndarray) -> np.ndarray:
        norms = store.norms[np.asarray(rows, dtype=np.int64)]
        dots = store.vectors_at(rows) @ self._unit_query(query)
        return -np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)

    def scan(self, store: GradientStore, query: Query) -> np.ndarray:
        dots = scan_inner_products(store.vectors, self._unit_query(query))
        norms = store.norms
        return -np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)


def _index_file(store: GradientStore, name: str, what: str) -> Path:
    """The estimator file `name` of the store's index; `InvalidInputError` when the index has none."""
    path = store.path / name
    if not path.exists():
        raise InvalidInputError(f"this index has no {what}; rebuild it with index-builder")
    return path


def datainf_matrices(vectors: np.ndarray, n_layers: int, block: int, damping: float = 0.1) -> np.ndarray:
    """DataInf's per-layer maps `M_l: (p, p)`, stacked `(L, p, p)`, from training vectors `(n, L*p)`."""
    n = vectors.shape[0]
    out = np.empty((n_layers, block, block), dtype=np.float64)
    for layer in range(n_layers):
        g = np.asarray(vectors[:, layer * block : (layer + 1) * block], dtype=np.float64)  # (n, p)
        sq = np.einsum("ij,ij->i", g, g)  # ||g_il||^2
        lam = damping * float(np.mean(sq)) / block
        if lam <= 0:  # every gradient of this layer is zero: it contributes nothing
            out[layer] = 0.0
            continue
        weighted = g / (lam + sq)[:, None]
        out[layer] = (np.eye(block) - (weighted.T @ g) / n) / lam
    return out


class DataInf:
    """`I = -<g_z, M g'>` with DataInf's block-diagonal `M` (see module docstring)."""

    name = "datainf"
    label = "DataInf"
    summary = "Gradient dot product with DataInf's curvature correction. Negative = helpful."
    signed = True

    def __init__(self, matrices: np.ndarray) -> None:
        self.matrices = matrices  # (L, p, p)

    @classmethod
    def available(cls, store: GradientStore) -> bool:
        return (store.path / DATAINF_FILE).exists()

    @classmethod
    def open(cls, store: GradientStore) -> Estimator:
        return cls(np.load(_index_file(store, DATAINF_FILE, "DataInf matrices")))

    def search_vector(self, query: Query) -> np.ndarray:
        n_layers, block, _ = self.matrices.shape
        blocks = np.asarray(query.grad, dtype=np.float64).reshape(n_layers, block)
        return np.einsum("lij,lj->li", self.matrices, blocks).reshape(-1).astype(np.float32)

    def influence(self, store: GradientStore, query: Query, rows: np.ndarray) -> np.ndarray:
        return -(store.vectors_at(rows) @ self.search_vector(query))

    def scan(self, store: GradientStore, query: Query) -> np.ndarray:
        return -scan_inner_products(store.vectors, self.search_vector(query))


def _terms(token_ids: list[int]) -> list[str]:
    return [str(t) for t in token_ids]


BM25_K1, BM25_B = 1.5, 0.75


class BM25:
    """Okapi BM25 over tokenizer ids (a similarity: larger = more related)."""

    name = "bm25"
    label = "BM25 (lexical)"
    summary = "Word overlap (BM25) instead of gradients: larger = more related."
    signed = False

    def __init__(self, retriever: object) -> None:
        self.retriever = retriever

    @classmethod
    def available(cls, store: GradientStore) -> bool:
        return (store.path / BM25_DIR).exists()

    @classmethod
    def open(cls, store: GradientStore) -> Estimator:
        return cls.load(_index_file(store, BM25_DIR, "BM25 index"))

    @staticmethod
    def build(corpus_ids: list[list[int]]) -> BM25:
        import bm25s

        retriever = bm25s.BM25(k1=BM25_K1, b=BM25_B, method="lucene")
        retriever.index([_terms(ids) for ids in corpus_ids], show_progress=False)
        return BM25(retriever)

    def save(self, path: Path) -> None:
        self.retriever.save(str(path))  # type: ignore[attr-defined]

    @staticmethod
    def load(path: Path) -> BM25:
        import bm25s

        return BM25(bm25s.BM25.load(str(path), mmap=True))

    def search_vector(self, query: Query) -> None:
        return None

    def scan(self, store: GradientStore, query: Query) -> np.ndarray:
        vocab = self.retriever.vocab_dict  # type: ignore[attr-defined]
        terms = [t for t in dict.fromkeys(_terms(query.token_ids)) if t in vocab]  # each distinct query term once
        if not terms:
            return np.zeros(store.n, dtype=np.float32)
        # bm25s ("lucene") leaves out the constant (k1 + 1) of the Okapi numerator; put it back
        scores = self.retriever.get_scores(terms)  # type: ignore[attr-defined]
        return np.asarray(scores, dtype=np.float32) * np.float32(BM25_K1 + 1)

    def influence(self, store: GradientStore, query: Query, rows: np.ndarray) -> np.ndarray:
        return self.scan(store, query)[np.asarray(rows, dtype=np.int64)]


class TracIn:
    """`I = -sum_c lr_c <g_z^c, g'^c>` over the index's checkpoints (scanned)."""

    name = "tracin"
    label = "TracIn"
    summary = "Gradient dot products summed over the training checkpoints (TracIn). Negative = helpful."
    signed = True

    def __init__(self, vectors: list[np.ndarray], lrs: list[float]) -> None:
        self.vectors, self.lrs = vectors, lrs

    @classmethod
    def available(cls, store: GradientStore) -> bool:
        return bool(store.manifest.checkpoints)

    @classmethod
    def open(cls, store: GradientStore) -> Estimator:
        checkpoints = store.manifest.checkpoints
        if not checkpoints:
            raise InvalidInputError(
                "tracin needs an index built from several checkpoints "
                "(index-builder build --checkpoint DIR=LR ...); this one has none"
            )
        vectors = [np.load(store.path / checkpoint_file(i), mmap_mode="r") for i in range(len(checkpoints))]
        return cls(vectors, [c.lr for c in checkpoints])

    def search_vector(self, query: Query) -> None:
        return None

    def _grads(self, query: Query) -> list[np.ndarray]:
        if query.checkpoint_grads is None or len(query.checkpoint_grads) != len(self.vectors):
            raise InvalidInputError("tracin needs the query's gradient under every checkpoint of the index")
        return query.checkpoint_grads

    def scan(self, store: GradientStore, query: Query) -> np.ndarray:
        total = np.zeros(store.n, dtype=np.float64)
        for v, lr, g in zip(self.vectors, self.lrs, self._grads(query), strict=True):
            total -= lr * scan_inner_products(v, g)
        return total

    def influence(self, store: GradientStore, query: Query, rows: np.ndarray) -> np.ndarray:
        idx = np.asarray(rows, dtype=np.int64)
        total = np.zeros(len(idx), dtype=np.float64)
        for v, lr, g in zip(self.vectors, self.lrs, self._grads(query), strict=True):
            total -= lr * (np.asarray(v[idx], dtype=np.float32) @ np.asarray(g, dtype=np.float32))
        return total


ESTIMATORS: dict[str, EstimatorKind] = {kind.name: kind for kind in (GradDot, GradCos, DataInf, BM25, TracIn)}
"""Every estimator a request can name, in the order clients list them. A new estimator is one
class with `name`, `label`, `summary`, `signed`, `available` and `open`, added here."""
ESTIMATOR_NAMES = tuple(ESTIMATORS)


def estimator_kind(name: str) -> EstimatorKind:
    """The registered estimator `name`; `InvalidInputError` naming the choices otherwise."""
    if name not in ESTIMATORS:
        raise InvalidInputError(f"unknown estimator {name!r}; choose one of: {', '.join(ESTIMATOR_NAMES)}")
    return ESTIMATORS[name]


class EstimatorSet:
    """The estimators one store serves, each opened on first use and kept."""

    def __init__(self, store: GradientStore) -> None:
        self.store = store
        self._open: dict[str, Estimator] = {}

    def names(self) -> list[str]:
        """The estimators this store can serve (in `ESTIMATOR_NAMES` order), without opening them."""
        return [name for name, kind in ESTIMATORS.items() if kind.available(self.store)]

    def get(self, name: str) -> Estimator:
        """The named estimator over this store (`InvalidInputError` if unknown or not in this index)."""
        if name not in self._open:
            self._open[name] = estimator_kind(name).open(self.store)
        return self._open[name]
