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

Implementations of `GradientStore`: `FaissGradientStore`. A new version is written whole by
`exemplar.index.write_index` (which adds the estimators' files) and renamed into place.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from exemplar import __version__
from exemplar.errors import IndexIncompatibleError, InvalidInputError, NotFoundError, quoted
from exemplar.search import (
    DEFAULT_PRESET,
    PRESETS,
    ExactSearch,
    FaissSearch,
    VectorSearch,
    direction_file,
    part_file,
    scan_inner_products,
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
    model_dtype: str = "float32"  # the weights' precision the vectors were computed in (queries use the same)
    device: str = "cpu"  # where they were computed (provenance; queries may run elsewhere)
    format_version: int = FORMAT_VERSION
    code_version: str = __version__
    created_at: float = field(default_factory=time.time)
    written_to: str | None = None  # the index directory's absolute path when this was written

    def to_json(self, index_dir: str | Path | None = None) -> str:
        """The manifest as JSON; with the directory it is written to, that directory is recorded
        (`written_to`) so that a reader can find a model that moved along with the index."""
        data = asdict(self)
        if index_dir is not None:
            data["written_to"] = str(Path(index_dir).resolve())
        return json.dumps(data, indent=2)

    @classmethod
    def from_json(cls, text: str, index_dir: str | Path | None = None) -> Manifest:
        """Parse a manifest read from `index_dir`. A model, adapter or checkpoint path inside the
        folder that held the index when it was written is looked up at the same place beside the
        index now, and used if it is there: the folder holding index and model can move (another
        host, a container volume); the model checksums still decide whether it is the same model."""
        data = json.loads(text)
        if index_dir is not None and data.get("written_to"):
            _map_paths(data, partial(_moved, Path(data["written_to"]).parent, Path(index_dir).resolve().parent))
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
        content: list[Any] = [e.id, e.text, e.label, e.prompt, e.response]
        if e.messages is not None:  # only then: the checksums of datasets without conversations stay as they were
            content.append(e.messages)
        if e.text_pair is not None:  # likewise
            content.append({"text_pair": e.text_pair})
        h.update(json.dumps(content, ensure_ascii=False).encode())
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
    messages: list[dict[str, str]] | None = None
    text_pair: str | None = None

    def to_example(self) -> Example:
        """The example as a task encodes it (its content fields), e.g. to compute its gradient again."""
        return Example(
            id=self.id,
            text=self.text,
            label=self.label,
            prompt=self.prompt,
            response=self.response,
            messages=self.messages,
            text_pair=self.text_pair,
        )


class GradientStore(Protocol):
    """Row-aligned gradient vectors, a search index over them and the examples."""

    path: Path  # the index directory (estimators open their own files in it)
    manifest: Manifest
    vectors: np.ndarray  # (n, d), memory-mapped
    norms: np.ndarray  # (n,) L2 norm of each row

    @property
    def n(self) -> int: ...

    @property
    def row_means(self) -> np.ndarray: ...

    def search(self, query: np.ndarray, k: int, preset: str = DEFAULT_PRESET) -> tuple[np.ndarray, np.ndarray]: ...

    def search_directions(self, queries: np.ndarray, k: int, preset: str = DEFAULT_PRESET) -> np.ndarray: ...

    @property
    def approximate(self) -> bool: ...  # an approximate search index (not a scan) serves its searches

    @property
    def directions_indexed(self) -> bool: ...  # `search_directions` is served by an index, not a scan

    def vectors_at(self, rows: np.ndarray) -> np.ndarray: ...

    def examples_at(self, rows: Sequence[int]) -> list[StoredExample]: ...

    def find_row(self, example: Example) -> int | None: ...

    def example_by_id(self, example_id: str) -> StoredExample: ...


def write_examples(path: Path, examples: Sequence[Example]) -> None:
    con = sqlite3.connect(path)
    try:
        con.execute(
            "CREATE TABLE examples (row INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, text TEXT, label TEXT,"
            " prompt TEXT, response TEXT, source TEXT NOT NULL, meta TEXT NOT NULL, messages TEXT, text_pair TEXT)"
        )
        con.executemany(
            "INSERT INTO examples VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    *(i, e.id, e.text, e.label, e.prompt, e.response, e.source),
                    json.dumps(e.meta, ensure_ascii=False),
                    None if e.messages is None else json.dumps(e.messages, ensure_ascii=False),
                    e.text_pair,
                )
                for i, e in enumerate(examples)
            ],
        )
        # `find_row` (the "self" strategy) looks a text or prompt up by an index, not a scan of every row
        # (a conversation is still compared with every stored conversation)
        con.execute("CREATE INDEX examples_by_text ON examples(text)")
        con.execute("CREATE INDEX examples_by_prompt ON examples(prompt, response)")
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
    return Manifest.from_json(path.read_text(), index_dir)


def _map_paths(data: dict[str, Any], fn: Callable[[str], str]) -> None:
    """Apply `fn` to the model and adapter paths of a manifest's JSON data (checkpoints too), in place."""
    for entry in (data, *data.get("checkpoints", [])):
        for key in ("model_dir", "adapter_dir"):
            if entry.get(key):
                entry[key] = fn(entry[key])


def _moved(old_home: Path, new_home: Path, path: str) -> str:
    """`path`, at the same place under `new_home` if it was under `old_home` and is there now."""
    if old_home == new_home or not Path(path).is_relative_to(old_home):
        return path
    candidate = new_home / Path(path).relative_to(old_home)
    return str(candidate) if candidate.exists() else path


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
            # indexes built before the directions files have none: reconstruct then scans for its pool
            directions = [self.path / direction_file(i) for i in range(m.shards)]
            directions = directions if any(p.exists() for p in directions) else []
            try:
                self.searcher = FaissSearch(self.vectors, self.norms, files, directions)
            except (RuntimeError, OSError, InvalidInputError) as exc:
                raise IndexIncompatibleError(
                    f"the search index files in {str(self.path)!r} are missing or disagree with the vectors; "
                    f"rebuild the index ({exc})"
                ) from exc
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

    def search_directions(self, queries: np.ndarray, k: int, preset: str = DEFAULT_PRESET) -> np.ndarray:
        """Rows nearest `queries: (nq, d)` by cosine after centring (`exemplar.search.FaissSearch.search_directions`)."""
        return self.searcher.search_directions(queries, k, preset)

    @property
    def approximate(self) -> bool:
        return isinstance(self.searcher, FaissSearch)

    @property
    def directions_indexed(self) -> bool:
        return isinstance(self.searcher, FaissSearch) and bool(self.searcher.directions)

    def vectors_at(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self.vectors[np.asarray(rows, dtype=np.int64)], dtype=np.float32)

    def _rows(self, sql: str, args: Sequence[Any]) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, tuple(args)).fetchall()

    @staticmethod
    def _example(r: tuple[Any, ...]) -> StoredExample:
        # older indexes have neither the messages nor the text_pair column
        messages = json.loads(r[8]) if len(r) > 8 and r[8] is not None else None
        text_pair = r[9] if len(r) > 9 else None
        return StoredExample(r[0], r[1], r[2], r[3], r[4], r[5], r[6], json.loads(r[7]), messages, text_pair)

    def examples_at(self, rows: Sequence[int]) -> list[StoredExample]:
        wanted = [int(r) for r in rows]
        found = {
            r[0]: self._example(r)
            for r in self._rows(f"SELECT * FROM examples WHERE row IN ({','.join('?' * len(wanted))})", wanted)
        }
        return [found[r] for r in wanted]

    def find_row(self, example: Example) -> int | None:
        """The row of a training example with exactly this content, if any (for the "self" strategy)."""
        if example.text is not None:  # the pair's second text compared here: older indexes have no column for it
            rows = self._rows(
                "SELECT * FROM examples WHERE text = ? AND (? IS NULL OR label = ?)",
                [example.text, example.label, example.label],
            )
            same = [e.row for e in map(self._example, rows) if e.text_pair == example.text_pair]
            return same[0] if same else None
        if example.messages is not None:  # compared here: older indexes have no messages column
            rows = self._rows("SELECT * FROM examples WHERE prompt IS NULL AND text IS NULL", [])
            same = [e.row for e in map(self._example, rows) if e.messages == example.messages]
            return same[0] if same else None
        found = self._rows(
            "SELECT row FROM examples WHERE prompt = ? AND response = ? LIMIT 1", [example.prompt, example.response]
        )
        return int(found[0][0]) if found else None

    def all_examples(self) -> list[Example]:
        """Every stored example, in row order (for rebuilding an index with more examples)."""
        rows = self._rows("SELECT * FROM examples ORDER BY row", [])
        return [replace(e.to_example(), source=e.source, meta=e.meta) for e in map(self._example, rows)]

    def example_by_id(self, example_id: str) -> StoredExample:
        rows = self._rows("SELECT * FROM examples WHERE id = ?", [example_id])
        if not rows:
            raise NotFoundError(f"no training example with id {quoted(example_id)} in this index")
        return self._example(rows[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
