"""Vector search: the stored rows with the largest inner product with a query vector.

The index type is chosen at build time by name (``INDEX_TYPES``) or by a raw FAISS factory
string; the search effort per request by a preset (``PRESETS``). Implementations of
``VectorSearch``:

- ``ExactSearch``: a chunked scan of the memory-mapped vectors (``scan_inner_products``,
  as the estimators' full scans). It serves "Flat" indexes and the "exact" preset of every
  index, holds one block of rows and one score per row in memory (an index larger than RAM
  still serves, from the page cache), and is the oracle the approximate ones are tested
  against.
- ``FaissSearch``: approximate FAISS indexes (IVF-Flat, IVF with fp16 scalar quantisation,
  HNSW, IVF-PQ), one file per norm bucket of each shard of contiguous rows, visited from the
  largest norms down and pruned by Cauchy-Schwarz, results merged. Files are memory-mapped
  (``_read_flags``): IVF inverted lists and HNSW's stored vectors stay in the file, so the
  server holds no second private copy of the vectors (only HNSW's graph is read into
  memory); per-request parameters go through
  FAISS ``SearchParameters``, so concurrent requests with different presets never change
  shared state.

Approximate search only decides which rows become candidates: the explainer re-scores
every candidate exactly against the stored vectors (``Estimator.influence``). A preset
asks the index for ``k_factor * k`` rows so that exact re-scoring can restore the order.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import faiss
import numpy as np

from exemplar.errors import InvalidInputError

SCAN_CHUNK_ROWS = 65536
"""Rows per block of a scan over the (memory-mapped) vectors."""


def scan_inner_products(vectors: np.ndarray, q: np.ndarray) -> np.ndarray:
    """`vectors @ q` over a (memory-mapped) `(n, d)` array in blocks of `SCAN_CHUNK_ROWS` rows."""
    n = vectors.shape[0]
    out = np.empty(n, dtype=np.float32)
    q32 = np.asarray(q, dtype=np.float32)
    for start in range(0, n, SCAN_CHUNK_ROWS):
        out[start : start + SCAN_CHUNK_ROWS] = (
            np.asarray(vectors[start : start + SCAN_CHUNK_ROWS], dtype=np.float32) @ q32
        )
    return out


INDEX_TYPES = {
    "flat": "Flat",
    "ivf": "IVF{nlist},Flat",
    "ivf_sq": "IVF{nlist},SQfp16",
    "hnsw": "HNSW32",
    "ivf_pq": "IVF{nlist},PQ{pq_m}",
}
"""Named index types -> FAISS factory strings; ``{nlist}`` and ``{pq_m}`` are sized from n and d."""

AUTO_APPROXIMATE_BYTES = 128 * 2**20
"""``index_type="auto"`` (the builder's default) builds ``hnsw`` once the float32 vectors exceed
this size, ``flat`` below it. An exact scan reads every vector for each search (two per
explanation: proponents and opponents): measured here at ~9 ms for 243 MB, and it grows
linearly, while HNSW's ``balanced`` preset stays at ~3 ms up to 1M rows (docs/benchmarks.md,
``benchmarks/exact_kernels.py`` and ``benchmarks/search.py``)."""

PRESETS = ("exact", "balanced", "fast")
DEFAULT_PRESET = "balanced"

NORM_BUCKETS = 8
"""Norm quantiles per shard of an approximate index (``FaissSearch``)."""

MIN_BUCKET_ROWS = 2000
"""Indexes smaller than this per bucket get fewer buckets (``norm_buckets_for``)."""

TRAIN_POINTS_PER_LIST = 50
"""IVF training sample: this many rows per inverted list (FAISS asks for at least 39)."""

PQ_MIN_EXAMPLES = 256

_FACTORY = re.compile(r"^(Flat|IVF\d+,(Flat|SQfp16|SQ8|PQ\d+(x\d+)?)|HNSW\d+(,Flat)?)$")


@dataclass(frozen=True)
class Preset:
    """Search effort: fraction of IVF lists probed, HNSW beam width, and over-fetch for re-scoring."""

    name: str
    nprobe_fraction: float  # IVF: probe ceil(fraction * nlist) lists (at least min_nprobe)
    min_nprobe: int
    ef_search: int  # HNSW beam width (at least the number of rows asked for)
    k_factor: int  # ask the index for k_factor * k rows; the caller re-scores them exactly


PRESET_PARAMS = {
    "balanced": Preset("balanced", nprobe_fraction=1 / 32, min_nprobe=8, ef_search=256, k_factor=2),
    "fast": Preset("fast", nprobe_fraction=1 / 128, min_nprobe=4, ef_search=96, k_factor=1),
}
"""The approximate presets; "exact" is a full scan. Measured in ``benchmarks/search.py``."""


def check_preset(preset: str) -> str:
    if preset not in PRESETS:
        raise InvalidInputError(f"unknown search preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    return preset


def resolve_index_type(index_type: str, n: int, dims: int) -> str:
    """``index_type`` with "auto" decided for ``n`` rows of ``dims`` dims (``AUTO_APPROXIMATE_BYTES`` of
    float32 vectors; float16 vectors switch at the same number of rows)."""
    if index_type != "auto":
        return index_type
    return "hnsw" if n * dims * 4 > AUTO_APPROXIMATE_BYTES else "flat"


def factory_string(index_type: str, n: int, dims: int) -> str:
    """The FAISS factory string for ``index_type`` (a name in ``INDEX_TYPES`` or a factory string).

    IVF lists: ``nlist`` = the power of two nearest ``4 sqrt(n)``, at most ``n / 39`` so
    every list can be trained. PQ: ``pq_m`` = ``dims / 16`` sub-quantisers (16 dims each,
    8 bits). Raw strings are accepted for the supported families (Flat, IVF*, HNSW*).
    """
    spec = INDEX_TYPES.get(index_type, index_type)
    if "{" in spec:
        nlist = max(1, min(2 ** round(math.log2(max(1.0, 4 * math.sqrt(n)))), n // 39))
        pq_m = max(1, dims // 16)
        while dims % pq_m:
            pq_m -= 1
        spec = spec.format(nlist=nlist, pq_m=pq_m)
    if not _FACTORY.match(spec):
        raise InvalidInputError(
            f"unsupported index type {index_type!r}; use auto, one of {', '.join(INDEX_TYPES)} or a FAISS factory "
            "string like 'IVF1024,Flat', 'IVF1024,SQfp16', 'HNSW32', 'IVF1024,PQ64'"
        )
    if spec.startswith("IVF"):
        nlist = int(spec[3 : spec.index(",")])
        if not 1 <= nlist <= n:
            raise InvalidInputError(f"{spec!r} needs 1 <= nlist <= n = {n} examples; use fewer lists")
    pq = re.search(r"PQ(\d+)", spec)
    if pq and dims % int(pq.group(1)):
        raise InvalidInputError(f"{spec!r}: the PQ size must divide the {dims} dims")
    if pq and n < PQ_MIN_EXAMPLES:
        raise InvalidInputError(
            f"{spec!r}: product quantisation trains 256 centroids per sub-quantiser and needs at least "
            f"{PQ_MIN_EXAMPLES} examples; got {n}; use ivf or flat"
        )
    return spec


def shard_bounds(n: int, shards: int) -> list[tuple[int, int]]:
    """Contiguous ``[start, stop)`` row ranges of ``shards`` near-equal shards."""
    if shards < 1 or shards > max(1, n):
        raise InvalidInputError(f"shards must be between 1 and the number of examples ({n}); got {shards}")
    edges = np.linspace(0, n, shards + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in itertools.pairwise(edges)]


def exact_top_k(vectors: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` rows of ``vectors: (n, d)`` with the largest ``<v, q>``, best first (ties by row)."""
    scores = scan_inner_products(vectors, q)  # (n,)
    k = min(k, scores.shape[0])
    top = np.argpartition(-scores, k - 1)[:k] if k < scores.shape[0] else np.arange(scores.shape[0])
    order = np.lexsort((top, -scores[top]))
    return scores[top[order]], top[order].astype(np.int64)


class VectorSearch(Protocol):
    """Top-k rows by inner product with a query vector ``(d,)``: ``(scores (k,), rows (k,))``;
    and the rows whose direction after centring is nearest each of several queries
    (``search_directions``, for ``reconstruct``'s pool)."""

    def search(self, query: np.ndarray, k: int, preset: str = DEFAULT_PRESET) -> tuple[np.ndarray, np.ndarray]: ...

    def search_directions(self, queries: np.ndarray, k: int, preset: str = DEFAULT_PRESET) -> np.ndarray: ...


class ExactSearch:
    """Exact search by scanning the (memory-mapped) vectors; every preset is exact."""

    def __init__(self, vectors: np.ndarray) -> None:
        self.vectors = vectors

    def search(self, query: np.ndarray, k: int, preset: str = DEFAULT_PRESET) -> tuple[np.ndarray, np.ndarray]:
        check_preset(preset)
        return exact_top_k(self.vectors, query, k)

    def search_directions(self, queries: np.ndarray, k: int, preset: str = DEFAULT_PRESET) -> np.ndarray:
        """The union of each query's exact top ``k`` rows by cosine after centring (``centred_cosines``),
        sorted row ids: the oracle of ``FaissSearch.search_directions``."""
        check_preset(preset)
        found = [np.argsort(-centred_cosines(self.vectors, q), kind="stable")[:k] for q in np.atleast_2d(queries)]
        return np.unique(np.concatenate(found)).astype(np.int64)


def _search_params(index: faiss.Index, preset: Preset, k: int) -> faiss.SearchParameters | None:
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        nprobe = min(ivf.nlist, max(preset.min_nprobe, math.ceil(preset.nprobe_fraction * ivf.nlist)))
        ivf_params = faiss.SearchParametersIVF()
        ivf_params.nprobe = nprobe
        return ivf_params
    inner = faiss.downcast_index(index.index if isinstance(index, faiss.IndexIDMap) else index)
    if isinstance(inner, faiss.IndexHNSW):
        hnsw_params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]  # missing from faiss's stubs
        hnsw_params.efSearch = max(preset.ef_search, k)
        return hnsw_params
    return None


def _read_flags(path: Path) -> int:
    """FAISS read flags that map a file's bulk instead of copying it: ``IO_FLAG_MMAP`` for IVF
    inverted lists; ``IO_FLAG_MMAP_IFC`` for HNSW's (and Flat's) stored vectors. The two cannot
    be combined (IVF's lists refuse the mapped reader), so the file's own header decides: an
    ``IndexIDMap`` ("IxMp") records its inner index's fourcc after 33 bytes of its own."""
    with path.open("rb") as f:
        head = f.read(64)
    inner = head[37:41] if head[:4] == b"IxMp" else head[:4]
    return faiss.IO_FLAG_MMAP if inner[:2] in (b"Iw", b"Iv") else faiss.IO_FLAG_MMAP_IFC  # IVF fourccs: Iw*, Iv*


def _stored_rows(index: faiss.IndexIDMap, path: Path, n: int) -> np.ndarray:
    """The global row ids an ``IndexIDMap`` file holds; ``InvalidInputError`` if any is outside ``[0, n)``."""
    rows = faiss.vector_to_array(index.id_map)
    if rows.size and (rows.min() < 0 or rows.max() >= n):
        raise InvalidInputError(f"{path.name} names rows outside the stored vectors")
    return rows


@dataclass
class _Part:
    """One FAISS file: the rows of one norm bucket of one shard, and the largest norm among them."""

    index: faiss.Index
    max_norm: float
    pad: int  # zeros appended to a query: 0 for an inner-product file, the augmented width for an L2 one


class FaissSearch:
    """Approximate search over norm-bucketed FAISS files, visited from the largest norms down.

    Each file holds the rows of one norm bucket of one shard (``IndexIDMap``: global row
    ids). A query visits them in decreasing order of their largest norm and stops as soon
    as ``fetch`` rows are found whose exact score beats ``max_norm * ||q||`` of the next
    file: by Cauchy-Schwarz no row there can enter the result (norm-ranging, Yan et al.
    2018). With heavy-tailed gradient norms the top rows by inner product are mostly large
    ones, so a query usually searches one small, norm-homogeneous file. "exact" falls back
    to ``ExactSearch``.
    """

    def __init__(
        self, vectors: np.ndarray, norms: np.ndarray, paths: Sequence[Path], directions: Sequence[Path] = ()
    ) -> None:
        self.vectors = vectors
        self.exact = ExactSearch(vectors)
        parts = []
        total = 0
        d = vectors.shape[1]
        for path in paths:
            index = faiss.read_index(str(path), _read_flags(path))
            ip = index.metric_type == faiss.METRIC_INNER_PRODUCT and index.d == d
            l2 = index.metric_type == faiss.METRIC_L2 and index.d > d  # MIPS-to-L2 augmented (build_faiss_shards)
            if not isinstance(index, faiss.IndexIDMap) or not (ip or l2):
                raise InvalidInputError(f"{path.name} is not a search file of this index")
            rows = _stored_rows(index, path, vectors.shape[0])
            total += rows.size
            parts.append(_Part(index, float(np.max(norms[rows])) if rows.size else 0.0, index.d - d))
        if total != vectors.shape[0]:
            raise InvalidInputError(f"the search files hold {total} rows, the vectors {vectors.shape[0]}")
        self.parts = sorted(parts, key=lambda p: -p.max_norm)
        self.directions = []
        for path in directions:
            index = faiss.read_index(str(path), _read_flags(path))
            if (
                not isinstance(index, faiss.IndexIDMap)
                or index.d != d
                or index.metric_type != faiss.METRIC_INNER_PRODUCT
            ):
                raise InvalidInputError(f"{path.name} is not a directions file of this index")
            _stored_rows(index, path, vectors.shape[0])
            self.directions.append(index)
        if self.directions and sum(ix.ntotal for ix in self.directions) != vectors.shape[0]:
            raise InvalidInputError("the direction files do not hold every stored row once")

    def search(self, query: np.ndarray, k: int, preset: str | Preset = DEFAULT_PRESET) -> tuple[np.ndarray, np.ndarray]:
        """Up to ``k_factor * k`` rows, exactly re-scored, best first (ties by row).

        ``preset`` is a preset name or, for benchmarks sweeping the effort, a ``Preset``.
        """
        if isinstance(preset, Preset):
            params = preset
        elif check_preset(preset) == "exact":
            return self.exact.search(query, k, preset)
        else:
            params = PRESET_PARAMS[preset]
        fetch = k * params.k_factor
        q = np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1)
        q_norm = float(np.linalg.norm(q))
        scores = np.empty(0, dtype=np.float32)
        rows = np.empty(0, dtype=np.int64)
        for part in self.parts:
            if rows.shape[0] >= fetch and scores[fetch - 1] > part.max_norm * q_norm:
                break  # Cauchy-Schwarz: no row of this (or any later) part can enter the top `fetch`
            q_part = np.pad(q, ((0, 0), (0, part.pad))) if part.pad else q  # (1, d + pad)
            _, found = part.index.search(
                q_part, min(fetch, part.index.ntotal), params=_search_params(part.index, params, fetch)
            )
            found = np.sort(found[0][found[0] >= 0].astype(np.int64))
            exact = np.asarray(self.vectors[found], dtype=np.float32) @ q[0]
            scores, rows = np.concatenate([scores, exact]), np.concatenate([rows, found])
            order = np.lexsort((rows, -scores))[:fetch]
            scores, rows = scores[order], rows[order]
        return scores, rows

    def search_directions(self, queries: np.ndarray, k: int, preset: str = DEFAULT_PRESET) -> np.ndarray:
        """The union of each query's approximate top ``k`` rows by cosine after centring: HNSW over
        the stored rows' centred unit directions (``build_direction_shards``), one file per
        shard, merged into the top ``k`` per query across shards; sorted row ids, for the caller
        to score exactly. "exact" scans (``ExactSearch.search_directions``)."""
        if check_preset(preset) == "exact" or not self.directions:
            return self.exact.search_directions(queries, k, preset)
        q = unit_directions(np.atleast_2d(queries))  # (nq, d)
        if k < 1:
            return np.empty(0, dtype=np.int64)
        cosines, rows = [], []
        for index in self.directions:
            fetch = min(k, index.ntotal)
            found_cos, found = index.search(q, fetch, params=_search_params(index, PRESET_PARAMS[preset], fetch))
            cosines.append(np.where(found >= 0, found_cos, -np.inf))  # (nq, fetch) inner products = cosines
            rows.append(found)
        cos, ids = np.concatenate(cosines, axis=1), np.concatenate(rows, axis=1)  # (nq, shards * fetch)
        best = np.take_along_axis(ids, np.argsort(-cos, axis=1, kind="stable")[:, :k], axis=1)
        return np.unique(best[best >= 0]).astype(np.int64)


def norm_buckets_for(n: int, shards: int) -> int:
    """Norm buckets per shard: ``NORM_BUCKETS``, fewer when a bucket would hold under ``MIN_BUCKET_ROWS`` rows."""
    return max(1, min(NORM_BUCKETS, n // (max(1, shards) * MIN_BUCKET_ROWS)))


def augment_width(spec: str) -> int:
    """Columns ``augment`` appends for factory string ``spec``: 1 for HNSW, 0 (raw inner products) otherwise.

    Measured in ``benchmarks/search.py``: the L2 reduction lifts HNSW's recall@100 (0.955 ->
    0.980 at 200k rows, ``balanced``) but lowers IVF's (0.303 -> 0.182): its coarse
    quantiser then ranks lists by ``<q, c> - |c'|^2 / 2`` instead of ``<q, c>``.
    """
    return 1 if spec.startswith("HNSW") else 0


def augment(rows: np.ndarray, norms: np.ndarray, max_norm: float, pad: int) -> np.ndarray:
    """The MIPS-to-L2 reduction (Bachrach et al. 2014): ``(m, d)`` rows -> ``(m, d + pad)`` float32.

    With ``pad = 1`` row ``x`` becomes ``[x, sqrt(M^2 - |x|^2)]`` with ``M = max_norm`` (the
    largest norm of its file), so every augmented row has norm ``M``; a query gets a zero,
    and ``|q' - x'|^2 = |q|^2 + M^2 - 2 <q, x>``: the L2 order is the inner-product order,
    and HNSW's graph is built on a true metric. ``pad = 0`` returns the rows unchanged.
    """
    x = np.asarray(rows, dtype=np.float32)
    if pad == 0:
        return np.ascontiguousarray(x)
    extra = np.zeros((x.shape[0], pad), dtype=np.float32)
    extra[:, 0] = np.sqrt(np.maximum(max_norm**2 - np.asarray(norms, dtype=np.float64) ** 2, 0.0))
    return np.ascontiguousarray(np.concatenate([x, extra], axis=1))


DIRECTIONS_SPEC = "HNSW32,SQfp16"
"""The directions index of an approximate index (``build_direction_shards``): HNSW by inner
product over unit vectors (their cosines; a row whose centred direction is zero scores 0, where
L2 would rank it as a cosine of 0.5), stored as fp16 (half the bytes of the rows)."""


def unit_directions(rows: np.ndarray) -> np.ndarray:
    """``(m, d)`` rows -> their centred unit directions ``(a - mean(a)) / |a - mean(a)|`` (zero stays zero), float32."""
    x = np.asarray(rows, dtype=np.float64)
    x = x - x.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(np.divide(x, norms, out=np.zeros_like(x), where=norms > 0), dtype=np.float32)


def centred_cosines(vectors: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``(n,)`` cosines between the centred rows of ``vectors`` and the centred ``q``, by one scan."""
    u = unit_directions(np.asarray(q)[None, :])[0]
    out = np.empty(vectors.shape[0], dtype=np.float64)
    for start in range(0, vectors.shape[0], SCAN_CHUNK_ROWS):
        out[start : start + SCAN_CHUNK_ROWS] = unit_directions(vectors[start : start + SCAN_CHUNK_ROWS]) @ u
    return out


def direction_file(shard: int) -> str:
    return f"directions-{shard:04d}.faiss"


def build_direction_shards(
    vectors: np.ndarray, shards: int, out_dir: Path, on_part: Callable[[int], None] | None = None
) -> list[str]:
    """For each shard of contiguous rows: an index (``DIRECTIONS_SPEC``) of its rows' centred unit
    directions under their global ids, written to ``out_dir``; returns the file names.

    ``reconstruct``'s pool wants the rows nearest the query after centring and the rows most
    aligned with it, at any norm. Within the norm-bucketed inner-product files under half of
    them are found (49 % and 48 % among 3,215 candidates on the large demo); among the 600
    nearest directions of ``g`` and ``-g``, 94 % and 97 % (``benchmarks/reconstruct_at_scale.py``)."""
    d = vectors.shape[1]
    names = []
    for i, (start, stop) in enumerate(shard_bounds(vectors.shape[0], shards)):
        index = faiss.IndexIDMap(faiss.index_factory(d, DIRECTIONS_SPEC, faiss.METRIC_INNER_PRODUCT))
        if not index.is_trained:
            index.train(unit_directions(vectors[start : min(stop, start + SCAN_CHUNK_ROWS)]))
        for a in range(start, stop, SCAN_CHUNK_ROWS):
            b = min(stop, a + SCAN_CHUNK_ROWS)
            index.add_with_ids(unit_directions(vectors[a:b]), np.arange(a, b, dtype=np.int64))
        names.append(direction_file(i))
        faiss.write_index(index, str(out_dir / names[-1]))
        if on_part is not None:
            on_part(1)
    return names


def part_file(shard: int, bucket: int) -> str:
    return f"index-{shard:04d}-{bucket:02d}.faiss"


def build_faiss_shards(
    vectors: np.ndarray,
    norms: np.ndarray,
    spec: str,
    shards: int,
    out_dir: Path,
    *,
    buckets: int = 1,
    seed: int = 0,
    on_part: Callable[[int], None] | None = None,
) -> list[str]:
    """For each shard of contiguous rows and each of its ``buckets`` quantiles of ``norms: (n,)``
    (the rows' L2 norms, as stored in ``norms.npy``): train an index of factory string ``spec``
    on a seeded sample of that bucket, add its rows under their global ids and write it to
    ``out_dir``; returns the file names."""
    n, d = vectors.shape
    rng = np.random.default_rng(seed)
    pad = augment_width(spec)
    names = []
    for i, (start, stop) in enumerate(shard_bounds(n, shards)):
        order = np.argsort(np.asarray(norms[start:stop]), kind="stable")
        for b, members in enumerate(np.array_split(order, buckets)):
            rows = np.sort(members).astype(np.int64) + start
            top = float(np.max(norms[rows])) if rows.size else 0.0
            metric = faiss.METRIC_L2 if pad else faiss.METRIC_INNER_PRODUCT
            index = faiss.IndexIDMap(faiss.index_factory(d + pad, spec, metric))
            if not index.is_trained:
                ivf = faiss.try_extract_index_ivf(index)
                want = TRAIN_POINTS_PER_LIST * (ivf.nlist if ivf is not None else 256)
                if "PQ" in spec:
                    want = max(want, 256 * TRAIN_POINTS_PER_LIST)
                sample = np.sort(rng.permutation(rows)[: min(rows.size, want)])
                index.train(augment(vectors[sample], norms[sample], top, pad))
            for a in range(0, rows.size, SCAN_CHUNK_ROWS):
                chunk = rows[a : a + SCAN_CHUNK_ROWS]
                index.add_with_ids(augment(vectors[chunk], norms[chunk], top, pad), chunk)
            names.append(part_file(i, b))
            faiss.write_index(index, str(out_dir / names[-1]))
            if on_part is not None:
                on_part(1)
    return names
