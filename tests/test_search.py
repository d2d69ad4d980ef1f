"""Vector search: exact scan and FAISS index types against numpy brute force; shards; versions."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from exemplar.errors import IndexIncompatibleError, InvalidInputError, NotFoundError
from exemplar.index import write_index
from exemplar.search import (
    INDEX_TYPES,
    PRESETS,
    SCAN_CHUNK_ROWS,
    ExactSearch,
    FaissSearch,
    augment,
    augment_width,
    exact_top_k,
    factory_string,
    norm_buckets_for,
    part_file,
    shard_bounds,
)
from exemplar.store import (
    CURRENT,
    FaissGradientStore,
    list_versions,
    publish_version,
    resolve_index,
)
from exemplar.tasks import Example
from tests.test_store import _manifest


def brute_top_k(vectors: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    """The k rows with the largest float64 inner product, ties by row."""
    scores = vectors.astype(np.float64) @ q.astype(np.float64)
    return np.array(sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k])


def clustered(n: int, d: int, seed: int) -> np.ndarray:
    """Gradient-like rows: a few clusters, heavy-tailed norms."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((8, d))
    rows = centres[rng.integers(0, 8, n)] + 0.5 * rng.standard_normal((n, d))
    return (rows * rng.lognormal(0.0, 0.8, (n, 1))).astype(np.float32)


def index_of(tmp_path: Path, vectors: np.ndarray, index_type: str = "flat", shards: int = 1, buckets: int = 1) -> Path:
    n, d = vectors.shape
    spec = factory_string(index_type, n // (shards * buckets), d)
    manifest = replace(_manifest(n, d), index_type=spec, shards=shards, norm_buckets=buckets)
    examples = [Example(id=f"e{i}", text=f"t{i}", label="neutral") for i in range(n)]
    return write_index(tmp_path / f"idx-{index_type}-{shards}-{buckets}", manifest, vectors, examples)


@pytest.mark.parametrize(("n", "k"), [(1, 1), (50, 10), (300, 300), (SCAN_CHUNK_ROWS + 37, 25)])
def test_exact_top_k_matches_brute_force_across_chunks(n: int, k: int) -> None:
    rng = np.random.default_rng(n)
    vectors = rng.standard_normal((n, 4)).astype(np.float32)
    vectors[n // 2] = vectors[0]  # a tie: the earlier row first
    q = rng.standard_normal(4).astype(np.float32)
    scores, rows = exact_top_k(vectors, q, k)
    expected = brute_top_k(vectors, q, k)
    np.testing.assert_allclose(
        vectors[rows].astype(np.float64) @ q, vectors[expected].astype(np.float64) @ q, rtol=1e-5
    )
    assert rows.dtype == np.int64
    assert len(set(rows.tolist())) == len(rows) == min(k, n)
    np.testing.assert_allclose(scores, vectors[rows] @ q, rtol=1e-5)
    assert np.all(np.diff(scores) <= 0)


def test_factory_strings_are_sized_from_the_data_and_checked() -> None:
    assert factory_string("flat", 10, 8) == "Flat"
    assert factory_string("ivf", 1_000_000, 1024) == "IVF4096,Flat"
    assert factory_string("ivf_sq", 200_000, 1024) == "IVF2048,SQfp16"
    assert factory_string("ivf_pq", 200_000, 1024) == "IVF2048,PQ64"
    assert factory_string("hnsw", 5, 8) == "HNSW32"
    assert factory_string("ivf", 100, 8) == "IVF2,Flat"  # at most n / 39 lists
    assert factory_string("IVF16,SQ8", 1000, 8) == "IVF16,SQ8"
    assert set(INDEX_TYPES) == {"flat", "ivf", "ivf_sq", "hnsw", "ivf_pq"}
    for bad, match in [
        ("LSH", "unsupported"),
        ("IVF0,Flat", "nlist"),
        ("IVF9999,Flat", "nlist"),
        ("IVF4,PQ3", "divide"),
    ]:
        with pytest.raises(InvalidInputError, match=match):
            factory_string(bad, 1000, 8)
    with pytest.raises(InvalidInputError, match="256 examples"):
        factory_string("ivf_pq", 200, 16)


def test_norm_buckets_shrink_for_small_indexes() -> None:
    assert norm_buckets_for(1_000_000, 1) == 8
    assert norm_buckets_for(1_000_000, 100) == 5
    assert norm_buckets_for(3000, 1) == 1


def test_shard_bounds_cover_every_row_once() -> None:
    assert shard_bounds(10, 3) == [(0, 3), (3, 7), (7, 10)]
    assert shard_bounds(5, 1) == [(0, 5)]
    for bad in (0, 11):
        with pytest.raises(InvalidInputError, match="shards"):
            shard_bounds(10, bad)


@pytest.mark.parametrize(("shards", "buckets"), [(1, 1), (3, 1), (2, 4)])
def test_exhaustive_ivf_over_shards_and_norm_buckets_is_exact(tmp_path: Path, shards: int, buckets: int) -> None:
    """IVF4 probes at least 8 lists under every preset, i.e. all of them: exact, merged across
    shards, and the Cauchy-Schwarz pruning of norm buckets never drops a row of the top."""
    vectors = clustered(400, 16, seed=1)
    store = FaissGradientStore(index_of(tmp_path, vectors, "IVF4,Flat", shards, buckets))
    names = sorted(p.name for p in store.path.glob("index-*.faiss"))
    assert names == [part_file(i, b) for i in range(shards) for b in range(buckets)]
    rng = np.random.default_rng(2)
    for _ in range(5):
        q = rng.standard_normal(16).astype(np.float32)
        for preset in PRESETS:
            scores, rows = store.search(q, 20, preset)
            expected = brute_top_k(vectors, q, 20)
            assert rows[:20].tolist() == expected.tolist(), preset
            np.testing.assert_allclose(scores, vectors[rows] @ q, rtol=1e-4)


@pytest.mark.parametrize("buckets", [1, 4])
@pytest.mark.parametrize("index_type", ["ivf", "ivf_sq", "hnsw", "ivf_pq"])
def test_approximate_types_find_the_exact_top_rows(tmp_path: Path, index_type: str, buckets: int) -> None:
    """Each type finds >= 90 % of the exact top-10 among what it returns under "balanced" (it
    over-fetches for exact re-scoring); "exact" is the brute force itself."""
    vectors = clustered(2000 * buckets, 32, seed=3)
    store = FaissGradientStore(index_of(tmp_path, vectors, index_type, 1, buckets))
    rng = np.random.default_rng(4)
    found = []
    for _ in range(20):
        q = vectors[rng.integers(0, len(vectors))] + 0.3 * rng.standard_normal(32).astype(np.float32)
        expected = brute_top_k(vectors, q, 10)
        found.append(len(set(store.search(q, 10, "balanced")[1].tolist()) & set(expected.tolist())) / 10)
        assert store.search(q, 10, "exact")[1].tolist() == expected.tolist()
    assert np.mean(found) >= 0.9


def test_augmented_l2_order_is_the_inner_product_order() -> None:
    """The MIPS-to-L2 reduction: every augmented row has norm M, and the rows sorted by L2
    distance to [q, 0] are the rows sorted by <q, x>, against brute force."""
    vectors = clustered(300, 12, seed=7)
    norms = np.linalg.norm(vectors, axis=1)
    aug = augment(vectors, norms, float(norms.max()), 1)
    assert aug.shape == (300, 13)
    assert aug.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(aug, axis=1), norms.max(), rtol=1e-5)
    q = np.random.default_rng(8).standard_normal(12).astype(np.float32)
    dist = np.linalg.norm(aug.astype(np.float64) - np.append(q, 0.0), axis=1)
    assert np.argsort(dist, kind="stable")[:20].tolist() == brute_top_k(vectors, q, 20).tolist()
    assert augment_width("HNSW32") == 1
    assert augment_width("IVF64,Flat") == 0
    np.testing.assert_array_equal(augment(vectors, norms, 1.0, 0), vectors)


def test_hnsw_files_are_augmented_and_older_inner_product_files_still_load(tmp_path: Path) -> None:
    import faiss

    vectors = clustered(3000, 16, seed=9)
    path = index_of(tmp_path, vectors, "hnsw")
    index = faiss.read_index(str(path / part_file(0, 0)))
    assert index.metric_type == faiss.METRIC_L2
    assert index.d == 17
    # a file written before the reduction: raw inner products over the d stored dims
    old = faiss.IndexIDMap(faiss.index_factory(16, "HNSW32", faiss.METRIC_INNER_PRODUCT))
    old.add_with_ids(vectors, np.arange(3000, dtype=np.int64))
    faiss.write_index(old, str(tmp_path / "old.faiss"))
    norms = np.linalg.norm(vectors, axis=1)
    q = vectors[5] + 0.1
    for search in (FaissGradientStore(path), FaissSearch(vectors, norms, [tmp_path / "old.faiss"])):
        rows = search.search(q, 10, "balanced")[1][:10]
        assert len(set(rows.tolist()) & set(brute_top_k(vectors, q, 10).tolist())) >= 9
    bad = faiss.IndexIDMap(faiss.index_factory(16, "HNSW32", faiss.METRIC_L2))  # L2 without the extra column
    bad.add_with_ids(vectors, np.arange(3000, dtype=np.int64))
    faiss.write_index(bad, str(tmp_path / "bad.faiss"))
    with pytest.raises(InvalidInputError, match="not a search file"):
        FaissSearch(vectors, norms, [tmp_path / "bad.faiss"])


def test_unknown_preset_and_missing_shard_file_are_refused(tmp_path: Path) -> None:
    vectors = clustered(200, 8, seed=5)
    path = index_of(tmp_path, vectors, "IVF2,Flat", 2)
    with pytest.raises(InvalidInputError, match="preset"):
        FaissGradientStore(path).search(vectors[0], 5, "quick")
    with pytest.raises(InvalidInputError, match="preset"):
        ExactSearch(vectors).search(vectors[0], 5, "quick")
    (path / part_file(1, 0)).unlink()
    with pytest.raises(IndexIncompatibleError, match="rebuild"):
        FaissGradientStore(path)


def test_versions_side_by_side_and_atomic_publication(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    vectors = clustered(60, 8, seed=6)
    examples = [Example(id=f"e{i}", text=f"t{i}", label="neutral") for i in range(60)]
    v1 = write_index(root / "v1", _manifest(60, 8), vectors, examples)
    assert resolve_index(root) == root  # no CURRENT yet: the root itself (not an index)
    with pytest.raises(NotFoundError):
        FaissGradientStore(resolve_index(root))
    publish_version(root, "v1")
    assert resolve_index(root) == v1
    assert resolve_index(v1) == v1
    v2 = write_index(root / "v2", replace(_manifest(50, 8), created_at=2e9), vectors[:50], examples[:50])
    publish_version(root, "v2")
    assert FaissGradientStore(resolve_index(root)).n == 50
    assert [(name, current) for name, _, current in list_versions(root)] == [("v1", False), ("v2", True)]
    assert not [p for p in os.listdir(root) if p.startswith(".")]  # no temporary file left behind
    publish_version(root, "v1")  # roll back
    assert resolve_index(root) == v1
    assert v2.exists()
    for bad, error in [("../v1", InvalidInputError), (".hidden", InvalidInputError), ("v3", NotFoundError)]:
        with pytest.raises(error):
            publish_version(root, bad)
    assert (root / CURRENT).read_text().strip() == "v1"
    (root / CURRENT).write_text("../../etc\n")
    with pytest.raises(InvalidInputError, match="version name"):
        resolve_index(root)


def test_auto_index_type_is_flat_up_to_the_measured_size_and_hnsw_above() -> None:
    from exemplar.search import AUTO_APPROXIMATE_BYTES, resolve_index_type

    rows_at_limit = AUTO_APPROXIMATE_BYTES // (4 * 608)
    assert resolve_index_type("auto", rows_at_limit, 608) == "flat"
    assert resolve_index_type("auto", rows_at_limit + 1, 608) == "hnsw"
    assert resolve_index_type("auto", 2000, 2432) == "flat"  # the tweets demo
    assert resolve_index_type("auto", 117_000, 608) == "hnsw"  # the large demo
    assert resolve_index_type("ivf", 10**7, 608) == "ivf"  # an explicit choice is kept


@pytest.mark.parametrize("shards", [1, 3])
def test_search_directions_finds_the_rows_nearest_by_centred_cosine(tmp_path: Path, shards: int) -> None:
    """An approximate index also writes a directions index (one file per shard); its top rows by
    cosine after centring hold >= 90 % of the exact ones at every norm, and "exact" is the scan
    (`centred_cosines`, checked against numpy here)."""
    from exemplar.search import centred_cosines, direction_file

    vectors = clustered(3000, 32, seed=5)
    path = index_of(tmp_path, vectors, "hnsw", shards, 2)
    assert sorted(p.name for p in path.glob("directions-*")) == [direction_file(i) for i in range(shards)]
    store = FaissGradientStore(path)
    assert store.approximate
    assert store.directions_indexed
    centred = vectors.astype(np.float64) - vectors.mean(axis=1, keepdims=True)
    rng = np.random.default_rng(6)
    recall = []
    for _ in range(10):
        queries = vectors[rng.integers(0, len(vectors), 2)] + 0.3 * rng.standard_normal((2, 32)).astype(np.float32)
        found = store.search_directions(queries, 30, "balanced")
        assert np.all(np.diff(found) > 0)
        assert found.dtype == np.int64
        for q in queries:
            qc = q - q.mean()
            cos = centred @ qc / (np.linalg.norm(centred, axis=1) * np.linalg.norm(qc))
            np.testing.assert_allclose(centred_cosines(vectors, q), cos, rtol=1e-4, atol=1e-5)
            best = set(np.argsort(-cos, kind="stable")[:10].tolist())
            recall.append(len(best & set(found.tolist())) / 10)
        exact = store.search_directions(queries, 5, "exact")
        expected = np.union1d(*(np.argsort(-centred_cosines(vectors, q), kind="stable")[:5] for q in queries))
        assert exact.tolist() == expected.tolist()
    assert np.mean(recall) >= 0.9


def test_directions_rank_zero_directions_last_and_old_or_partial_indexes(tmp_path: Path) -> None:
    """A row whose centred direction is zero has cosine 0 (it does not crowd out real matches);
    an index without directions files (built before them) opens and scans; one with some of
    them missing is refused; FAISS files are mapped, not copied, by their own type."""
    import faiss

    from exemplar.search import _read_flags, direction_file

    vectors = clustered(3000, 32, seed=9)
    vectors[:300] = 0.0  # 10 % all-zero gradients
    vectors[300:400] = 1.5  # constant rows: zero once centred
    path = index_of(tmp_path, vectors, "hnsw", 2, 1)
    store = FaissGradientStore(path)
    rng = np.random.default_rng(10)
    q = vectors[1000] + 0.1 * rng.standard_normal(32).astype(np.float32)
    found = store.search_directions(q[None, :], 50, "balanced")
    assert not set(found.tolist()) & set(range(400))
    assert store.search_directions(q[None, :], 0, "balanced").size == 0
    assert _read_flags(path / part_file(0, 0)) == faiss.IO_FLAG_MMAP_IFC
    assert _read_flags(path / direction_file(0)) == faiss.IO_FLAG_MMAP_IFC
    ivf = index_of(tmp_path, vectors, "ivf", 1, 1)
    assert _read_flags(ivf / part_file(0, 0)) == faiss.IO_FLAG_MMAP
    (path / direction_file(1)).unlink()
    with pytest.raises(IndexIncompatibleError, match="rebuild"):
        FaissGradientStore(path)
    (path / direction_file(0)).unlink()
    old = FaissGradientStore(path)
    assert old.approximate
    assert not old.directions_indexed
    assert (
        old.search_directions(q[None, :], 5, "balanced").tolist()
        == store.search_directions(q[None, :], 5, "exact").tolist()
    )


def test_reconstruct_pool_comes_from_the_index_without_a_scan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On an approximate index `reconstruct`'s pool is found through `search_directions` and never reads
    every row (no `row_means`, no full scan); the selection `reconstruct` makes from it scores
    within 0.5 dB of the one from the exact (scanned) pool, and "exact" still scans."""
    from exemplar.relevance import selection_relevance
    from exemplar.strategies.reconstruct import ReconstructPool, reconstruct_selections

    vectors = clustered(8000, 32, seed=7)
    store = FaissGradientStore(index_of(tmp_path, vectors, "hnsw", 1, 4))

    class NoScan(FaissGradientStore):
        @property
        def row_means(self) -> np.ndarray:
            raise AssertionError("the indexed pool must not scan the store")

    indexed = NoScan(store.path)
    rng = np.random.default_rng(8)
    exact_pool = ReconstructPool(store).candidates

    def no_scan(*args: object) -> np.ndarray:
        raise AssertionError("the indexed pool must not scan the store")

    import exemplar.search
    import exemplar.strategies.reconstruct

    scanned: dict[str, np.ndarray] = {}

    def best_db(g: np.ndarray, pool: np.ndarray) -> float:
        found = reconstruct_selections(g, vectors[pool], 5, solver="paper", pool_size=pool.size)
        return max(selection_relevance(g, vectors[pool[sel]]).db for sel in found)

    gaps = []
    for _ in range(5):
        g = vectors[rng.integers(0, len(vectors))] + 0.3 * rng.standard_normal(32).astype(np.float32)
        scanned["exact"] = exact_pool(g, 30, 30, mixture=True, preset="exact")
        with monkeypatch.context() as patched:
            patched.setattr(exemplar.strategies.reconstruct, "scan_inner_products", no_scan)
            patched.setattr(exemplar.search, "centred_cosines", no_scan)
            got = ReconstructPool(indexed).candidates(g, 30, 30, mixture=True, preset="balanced")
        exact = scanned["exact"]
        assert np.all(np.diff(got) > 0)
        assert 0 <= got.min() <= got.max() < len(vectors)
        gaps.append(best_db(g, exact) - best_db(g, got))
    assert np.median(gaps) <= 0.5, gaps
    with pytest.raises(AssertionError, match="must not scan"):
        ReconstructPool(indexed).candidates(g, 30, 30, mixture=True, preset="exact")
