"""The gradient store: one directory per index version.

Layout (the manifest is written last, so a directory without it is not an index):
- `vectors.npy`: row-aligned float32 projected gradients `(n, d)`, memory-mapped on open
- `index-SSSS-BB.faiss`: approximate FAISS inner-product indexes, one per norm bucket BB of
  each shard SSSS of contiguous rows (only for index types other than "Flat", which is
  searched by scanning the memory-mapped vectors; see `exemplar.search`)
- `examples.sqlite`: the examples (id, text/label or prompt/response, source, metadata)
- `norms.npy`: L2 norm of each row (cosine estimator)
- `datainf.npy`: DataInf's per-layer preconditioner `(L, p, p)` (see `exemplar.estimators`)
- `bm25/`: a BM25 index over the examples' token ids (bm25s, no pickle)
- `manifest.json`: model checksum, parameter selection, projection seed and dims,
  dataset checksum, code version; checked whenever the index is opened or used.

Implementations of `GradientStore`: `FaissGradientStore`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from exemplar import __version__
from exemplar.errors import IndexIncompatibleError, InvalidInputError, NotFoundError
from exemplar.estimators import (
    BM25,
    BM25_DIR,
    DATAINF_FILE,
    ESTIMATOR_NAMES,
    DataInf,
    Estimator,
    GradCos,
    GradDot,
    TracIn,
    datainf_matrices,
    scan_inner_products,
)
from exemplar.progress import Progress, SilentProgress
from exemplar.search import (
    DEFAULT_PRESET,
    PRESETS,
    ExactSearch,
    FaissSearch,
    VectorSearch,
    build_faiss_shards,
    factory_string,
    part_file,
    shard_bounds,
)
from exemplar.tasks import Example

FORMAT_VERSION = 2
MANIFEST, VECTORS, EXAMPLES_DB = "manifest.json", "vectors.npy", "examples.sqlite"
NORMS = "norms.npy"
VECTOR_DTYPES = ("float32", "float16")


def checkpoint_file(i: int) -> str:
    return f"checkpoint_{i}.npy"


@dataclass(frozen=True)
class Checkpoint:
    """An earlier checkpoint the index also holds gradients for (TracIn)."""

    model_dir: str
    adapter_dir: str | None
    model_checksum: str
    lr: float


@dataclass(frozen=True)
class Manifest:
    """Provenance of an index; two indexes are comparable only if these agree."""

    task: str
    model_dir: str
    adapter_dir: str | None
    model_checksum: str
    params: str
    layer_names: list[str]
    proj_dim: int
    seed: int
    dims: int
    n_examples: int
    dataset_checksum: str
    max_length: int
    labels: list[str] | None = None
    checkpoints: list[Checkpoint] = field(default_factory=list)
    index_type: str = "Flat"  # FAISS factory string ("Flat": exact scan; see exemplar.search)
    shards: int = 1  # FAISS index files over contiguous row ranges (approximate index types)
    norm_buckets: int = 1  # per shard: FAISS files over norm quantiles (exemplar.search.FaissSearch)
    vector_dtype: str = "float32"  # "float16" halves vectors.npy
    format_version: int = FORMAT_VERSION
    code_version: str = __version__
    created_at: float = field(default_factory=time.time)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        if data.get("format_version") != FORMAT_VERSION:
            raise IndexIncompatibleError(
                f"index format {data.get('format_version')} is not supported by this version "
                f"(expects {FORMAT_VERSION}); rebuild the index with index-builder"
            )
        known = set(cls.__dataclass_fields__)
        data["checkpoints"] = [Checkpoint(**c) for c in data.get("checkpoints", [])]
        return cls(**{k: v for k, v in data.items() if k in known})

    def summary(self) -> dict[str, Any]:
        """What a client needs to know about the served index."""
        return {
            "task": self.task,
            "n_examples": self.n_examples,
            "dims": self.dims,
            "params": self.params,
            "proj_dim": self.proj_dim,
            "seed": self.seed,
            "model_checksum": self.model_checksum[:16],
            "dataset_checksum": self.dataset_checksum[:16],
            "labels": self.labels,
            "checkpoints": len(self.checkpoints),
            "index_type": self.index_type,
            "shards": self.shards,
            "norm_buckets": self.norm_buckets,
            "presets": list(PRESETS),
            "vector_dtype": self.vector_dtype,
            "code_version": self.code_version,
            "created_at": self.created_at,
        }

    def check_model(
        self, *, task: str, model_checksum: str, params: str, layer_names: list[str], proj_dim: int, seed: int
    ) -> None:
        """Refuse a model or projection that differs from the one the index was built with."""
        problems = []
        if task != self.task:
            problems.append(f"task {task!r} != index task {self.task!r}")
        if model_checksum != self.model_checksum:
            problems.append("model weights differ from the ones the index was built from (checksum mismatch)")
        if params != self.params or layer_names != self.layer_names:
            problems.append(f"parameter selection {params!r} differs from the index's {self.params!r}")
        if (proj_dim, seed) != (self.proj_dim, self.seed):
            problems.append(
                f"projection (dim {proj_dim}, seed {seed}) != index (dim {self.proj_dim}, seed {self.seed})"
            )
        if problems:
            raise IndexIncompatibleError(
                "index is incompatible with this model: "
                + "; ".join(problems)
                + ". Rebuild the index with index-builder."
            )


def dataset_checksum(examples: Sequence[Example]) -> str:
    """sha256 over the canonical JSON of the examples, in order."""
    h = hashlib.sha256()
    for e in examples:
        h.update(json.dumps([e.id, e.text, e.label, e.prompt, e.response], ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()


@dataclass(frozen=True)
class StoredExample:
    """One indexed training example as served to clients."""

    row: int
    id: str
    text: str | None
    label: str | None
    prompt: str | None
    response: str | None
    source: str
    meta: dict[str, Any]

    def to_example(self) -> Example:
        """The example as a task encodes it (its content fields), e.g. to compute its gradient again."""
        return Example(id=self.id, text=self.text, label=self.label, prompt=self.prompt, response=self.response)


class GradientStore(Protocol):
    """Row-aligned gradient vectors, a search index over them and the examples."""

    manifest: Manifest

    def search(self, query: np.ndarray, k: int, preset: str = DEFAULT_PRESET) -> tuple[np.ndarray, np.ndarray]: ...

    def estimator(self, name: str) -> Estimator: ...

    def estimator_names(self) -> list[str]: ...

    def vectors_at(self, rows: np.ndarray) -> np.ndarray: ...

    def examples_at(self, rows: Sequence[int]) -> list[StoredExample]: ...

    def find_row(self, example: Example) -> int | None: ...

    def example_by_id(self, example_id: str) -> StoredExample: ...


def write_index(
    out_dir: str | Path,
    manifest: Manifest,
    vectors: np.ndarray,
    examples: Sequence[Example],
    *,
    token_ids: Sequence[list[int]] | None = None,
    checkpoint_vectors: Sequence[np.ndarray] = (),
    overwrite: bool = False,
    progress: Progress | None = None,
) -> Path:
    """Write a complete index to a temporary sibling directory, then rename it into place.

    ``manifest.index_type`` must already be a factory string (``search.factory_string``).
    """
    out = Path(out_dir)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.shape != (len(examples), manifest.dims) or manifest.n_examples != len(examples):
        raise InvalidInputError(
            f"vectors {vectors.shape} do not match {len(examples)} examples of {manifest.dims} dims"
        )
    if not np.isfinite(vectors).all():
        raise InvalidInputError("some gradients are not finite (NaN/inf); check the model and the data")
    if out.exists() and not overwrite:
        raise InvalidInputError(f"{str(out)!r} already exists; choose another --out or pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        if manifest.vector_dtype not in VECTOR_DTYPES:
            raise InvalidInputError(
                f"vector dtype must be one of {', '.join(VECTOR_DTYPES)}; got {manifest.vector_dtype!r}"
            )
        np.save(tmp / VECTORS, vectors.astype(manifest.vector_dtype))
        norms = np.linalg.norm(vectors, axis=1).astype(np.float32)  # (n,)
        np.save(tmp / NORMS, norms)
        n_layers = len(manifest.layer_names)
        np.save(tmp / DATAINF_FILE, datainf_matrices(vectors, n_layers, manifest.dims // max(1, n_layers)))
        if token_ids is not None:
            BM25.build(list(token_ids)).save(tmp / BM25_DIR)
        for i, extra in enumerate(checkpoint_vectors):
            np.save(tmp / checkpoint_file(i), np.ascontiguousarray(extra, dtype=np.float32))
        if factory_string(manifest.index_type, len(examples), manifest.dims) != manifest.index_type:
            raise InvalidInputError(f"index type {manifest.index_type!r} is not a resolved factory string")
        if manifest.index_type == "Flat":
            shard_bounds(len(examples), manifest.shards)  # validates the count; nothing to build
        else:
            bar = progress or SilentProgress()
            bar.start(f"search index {manifest.index_type}", manifest.shards * manifest.norm_buckets, unit="file")
            build_faiss_shards(
                vectors,
                norms,
                manifest.index_type,
                manifest.shards,
                tmp,
                buckets=manifest.norm_buckets,
                seed=manifest.seed,
                on_part=bar.advance,
            )
            bar.finish()
        _write_examples(tmp / EXAMPLES_DB, examples)
        (tmp / MANIFEST).write_text(manifest.to_json())
        if out.exists():  # swap: the old version stays complete until the new one is in place
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_examples(path: Path, examples: Sequence[Example]) -> None:
    con = sqlite3.connect(path)
    try:
        con.execute(
            "CREATE TABLE examples (row INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, text TEXT, label TEXT,"
            " prompt TEXT, response TEXT, source TEXT NOT NULL, meta TEXT NOT NULL)"
        )
        con.executemany(
            "INSERT INTO examples VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (i, e.id, e.text, e.label, e.prompt, e.response, e.source, json.dumps(e.meta, ensure_ascii=False))
                for i, e in enumerate(examples)
            ],
        )
        con.commit()
    except sqlite3.IntegrityError as exc:
        raise InvalidInputError(f"example ids must be unique: {exc}") from exc
    finally:
        con.close()


CURRENT = "CURRENT"
"""In a versioned index root: a file naming the version directory being served."""

_VERSION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def check_version_name(name: str) -> str:
    if not _VERSION_NAME.match(name):
        raise InvalidInputError(
            f"version name {name!r} must be 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


def resolve_index(path: str | Path) -> Path:
    """The index directory ``path`` stands for: itself, or in a versioned root the version its ``CURRENT`` names.

    A versioned root holds versions side by side (``ROOT/<version>/``, each a complete
    index) and a ``CURRENT`` file; ``publish_version`` switches it atomically.
    """
    root = Path(path)
    name = None if (root / MANIFEST).exists() else _current_name(root)
    return root if name is None else root / check_version_name(name)


def _current_name(root: Path) -> str | None:
    """The version a versioned root's ``CURRENT`` names; None without one."""
    return (root / CURRENT).read_text().strip() if (root / CURRENT).exists() else None


def publish_version(root: str | Path, name: str) -> Path:
    """Make ``root/name`` (a complete index) the version ``root`` serves: ``CURRENT`` is replaced in one rename."""
    target = Path(root) / check_version_name(name)
    read_manifest(target)  # refuses a directory that is not a complete index
    tmp = Path(root) / f".{CURRENT}.{os.getpid()}.{threading.get_ident()}"
    tmp.write_text(name + "\n")
    os.replace(tmp, Path(root) / CURRENT)
    return target


def list_versions(root: str | Path) -> list[tuple[str, Manifest, bool]]:
    """(name, manifest, is current) of every complete version in a versioned root, oldest first."""
    base = Path(root)
    if not base.is_dir():
        raise NotFoundError(f"{str(root)!r} is not a directory")
    current = _current_name(base)
    found = [
        (p.name, read_manifest(p), p.name == current)
        for p in base.iterdir()
        if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST).exists()
    ]
    return sorted(found, key=lambda v: (v[1].created_at, v[0]))


def read_manifest(index_dir: str | Path) -> Manifest:
    path = Path(index_dir) / MANIFEST
    if not path.exists():
        raise NotFoundError(f"{str(index_dir)!r} is not an index (no {MANIFEST}); build one with index-builder build")
    return Manifest.from_json(path.read_text())


class FaissGradientStore:
    """An opened index directory: exact FAISS search, memory-mapped vectors, SQLite examples."""

    def __init__(self, index_dir: str | Path) -> None:
        self.path = Path(index_dir)
        self.manifest = read_manifest(self.path)
        self.vectors = np.load(self.path / VECTORS, mmap_mode="r")
        n, d = self.vectors.shape
        if (n, d) != (self.manifest.n_examples, self.manifest.dims):
            raise IndexIncompatibleError(f"index files in {str(self.path)!r} disagree with its manifest; rebuild it")
        self.norms = np.load(self.path / NORMS, mmap_mode="r")
        self.searcher: VectorSearch
        if self.manifest.index_type == "Flat":
            self.searcher = ExactSearch(self.vectors)
        else:
            m = self.manifest
            files = [self.path / part_file(i, b) for i in range(m.shards) for b in range(m.norm_buckets)]
            try:
                self.searcher = FaissSearch(self.vectors, self.norms, files)
            except (RuntimeError, InvalidInputError) as exc:
                raise IndexIncompatibleError(
                    f"the search index files in {str(self.path)!r} are missing or disagree with the vectors; "
                    f"rebuild the index ({exc})"
                ) from exc
        self._estimators: dict[str, Estimator] = {}
        self._db = sqlite3.connect(f"file:{self.path / EXAMPLES_DB}?mode=ro", uri=True, check_same_thread=False)
        self._lock = threading.Lock()

    @functools.cached_property
    def row_means(self) -> np.ndarray:
        """Mean coordinate of each stored vector `(n,)`, computed by one scan on first use."""
        d = self.manifest.dims
        return scan_inner_products(self.vectors, np.full(d, 1.0 / d, dtype=np.float32)).astype(np.float64)

    @property
    def n(self) -> int:
        return int(self.vectors.shape[0])

    def search(self, query: np.ndarray, k: int, preset: str = DEFAULT_PRESET) -> tuple[np.ndarray, np.ndarray]:
        """Top-`k` rows by inner product with `query: (d,)`: `(scores, rows)`, best first.

        Approximate presets may return up to `k_factor * k` rows (`exemplar.search`) for the
        caller to re-score exactly.
        """
        return self.searcher.search(query, k, preset)

    def estimator_names(self) -> list[str]:
        """The estimators this index can serve (in `ESTIMATOR_NAMES` order), without loading them."""
        available = {
            "grad_dot": True,
            "grad_cos": True,
            "datainf": (self.path / DATAINF_FILE).exists(),
            "bm25": (self.path / BM25_DIR).exists(),
            "tracin": bool(self.manifest.checkpoints),
        }
        return [name for name in ESTIMATOR_NAMES if available.get(name, False)]

    def estimator(self, name: str) -> Estimator:
        """The named influence estimator over this store, loaded once."""
        if name not in self._estimators:
            if name == "grad_dot":
                self._estimators[name] = GradDot()
            elif name == "grad_cos":
                self._estimators[name] = GradCos()
            elif name == "datainf":
                self._estimators[name] = DataInf(np.load(self.path / DATAINF_FILE))
            elif name == "tracin":
                if not self.manifest.checkpoints:
                    raise InvalidInputError(
                        "tracin needs an index built from several checkpoints "
                        "(index-builder build --checkpoint DIR=LR ...); this one has none"
                    )
                vectors = [
                    np.load(self.path / checkpoint_file(i), mmap_mode="r")
                    for i in range(len(self.manifest.checkpoints))
                ]
                self._estimators[name] = TracIn(vectors, [c.lr for c in self.manifest.checkpoints])
            elif name == "bm25":
                if not (self.path / BM25_DIR).exists():
                    raise InvalidInputError("this index has no BM25 index; rebuild it with index-builder")
                self._estimators[name] = BM25.load(self.path / BM25_DIR)
            else:
                raise InvalidInputError(f"unknown estimator {name!r}; choose one of: {', '.join(ESTIMATOR_NAMES)}")
        return self._estimators[name]

    def vectors_at(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self.vectors[np.asarray(rows, dtype=np.int64)], dtype=np.float32)

    def _rows(self, sql: str, args: Sequence[Any]) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, tuple(args)).fetchall()

    @staticmethod
    def _example(r: tuple[Any, ...]) -> StoredExample:
        return StoredExample(r[0], r[1], r[2], r[3], r[4], r[5], r[6], json.loads(r[7]))

    def examples_at(self, rows: Sequence[int]) -> list[StoredExample]:
        wanted = [int(r) for r in rows]
        found = {
            r[0]: self._example(r)
            for r in self._rows(f"SELECT * FROM examples WHERE row IN ({','.join('?' * len(wanted))})", wanted)
        }
        return [found[r] for r in wanted]

    def find_row(self, example: Example) -> int | None:
        """The row of a training example with exactly this content, if any (for the "self" strategy)."""
        if example.text is not None:
            sql, args = (
                "SELECT row FROM examples WHERE text = ? AND (? IS NULL OR label = ?) LIMIT 1",
                [example.text, example.label, example.label],
            )
        else:
            sql, args = (
                "SELECT row FROM examples WHERE prompt = ? AND response = ? LIMIT 1",
                [example.prompt, example.response],
            )
        found = self._rows(sql, args)
        return int(found[0][0]) if found else None

    def all_examples(self) -> list[Example]:
        """Every stored example, in row order (for rebuilding an index with more examples)."""
        rows = self._rows("SELECT * FROM examples ORDER BY row", [])
        return [
            Example(
                id=e.id, text=e.text, label=e.label, prompt=e.prompt, response=e.response, source=e.source, meta=e.meta
            )
            for e in map(self._example, rows)
        ]

    def example_by_id(self, example_id: str) -> StoredExample:
        rows = self._rows("SELECT * FROM examples WHERE id = ?", [example_id])
        if not rows:
            raise NotFoundError(f"no training example with id {example_id!r} in this index")
        return self._example(rows[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
