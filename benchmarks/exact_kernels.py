"""Exact top-k over memory-mapped vectors: the store's numpy scan beside FAISS's own kernels.

One query at a time (and two, as an explanation asks: proponents and opponents), top 100, over
float32 vectors memory-mapped from a .npy file as the store keeps them, blocks of
`SCAN_CHUNK_ROWS` rows:

- numpy: `exemplar.search.exact_top_k` (BLAS sgemv per block, then argpartition), what serves
  flat indexes and the "exact" preset;
- faiss.knn: `faiss.knn(q, block, 100, METRIC_INNER_PRODUCT)` per block, results merged;
- faiss.knn, BLAS: the same with `distance_compute_blas_threshold = 1` (FAISS uses BLAS only
  from 20 queries on by default);
- IndexFlatIP: a flat FAISS index per block (the vectors copied into it once, outside the timing).

    .venv/bin/python benchmarks/exact_kernels.py

Prints ms per search for each and the ratio to numpy. The last line is
`exact_kernels: n=<largest> d=<d> numpy_ms=<..> best_faiss_ms=<..> faiss_vs_numpy=<ratio>`.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np

from exemplar.search import SCAN_CHUNK_ROWS, exact_top_k

TOP = 100


def timed(fn: Callable[[], object], repeats: int) -> float:
    fn()
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - started) / repeats * 1e3


def merged(parts: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    scores = np.concatenate([s for s, _ in parts], axis=1)
    rows = np.concatenate([r for _, r in parts], axis=1)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :TOP]
    return np.take_along_axis(rows, order, axis=1)


def compare(vectors: np.ndarray, q: np.ndarray, repeats: int) -> dict[str, float]:
    """ms per search of `q: (nq, d)` over `vectors` for each kernel (FAISS results checked against numpy)."""
    n, d = vectors.shape
    blocks = range(0, n, SCAN_CHUNK_ROWS)
    flats = []
    for start in blocks:
        flat = faiss.IndexFlatIP(d)
        flat.add(np.ascontiguousarray(vectors[start : start + SCAN_CHUNK_ROWS]))
        flats.append((start, flat))

    def numpy_scan() -> list[np.ndarray]:
        return [exact_top_k(vectors, row, TOP)[1] for row in q]

    def knn() -> np.ndarray:
        parts = []
        for start in blocks:
            block = np.asarray(vectors[start : start + SCAN_CHUNK_ROWS])
            s, r = faiss.knn(q, block, TOP, metric=faiss.METRIC_INNER_PRODUCT)
            parts.append((s, r + start))
        return merged(parts)

    def flat_ip() -> np.ndarray:
        parts = []
        for start, flat in flats:
            s, r = flat.search(q, TOP)
            parts.append((s, r + start))
        return merged(parts)

    expected = np.stack(numpy_scan())
    for got in (knn(), flat_ip()):
        assert np.mean([len(set(a) & set(b)) for a, b in zip(got, expected, strict=True)]) >= TOP - 1
    times = {"numpy": timed(numpy_scan, repeats), "knn": timed(knn, repeats)}
    faiss.cvar.distance_compute_blas_threshold = 1
    times["knn_blas"] = timed(knn, repeats)
    faiss.cvar.distance_compute_blas_threshold = 20
    times["flat_ip"] = timed(flat_ip, repeats)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, action="append", help="rows (repeatable); default 20k, 100k, 300k")
    parser.add_argument("--d", type=int, action="append", help="dims (repeatable); default 608 and 2432")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"{'n':>8} {'d':>5} {'queries':>7} {'numpy':>8} {'knn':>8} {'knn BLAS':>9} {'FlatIP':>8}  (ms; x numpy)")
    last = ""
    for d in args.d or [608, 2432]:
        for n in args.n or [20_000, 100_000, 300_000]:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "vectors.npy"
                np.save(path, rng.standard_normal((n, d), dtype=np.float32))
                vectors = np.load(path, mmap_mode="r")
                for nq in (1, 2):
                    t = compare(vectors, rng.standard_normal((nq, d), dtype=np.float32), args.repeats)
                    ratios = " ".join(f"{t[k] / t['numpy']:.1f}x" for k in ("knn", "knn_blas", "flat_ip"))
                    print(
                        f"{n:>8,} {d:>5} {nq:>7} {t['numpy']:8.1f} {t['knn']:8.1f} {t['knn_blas']:9.1f} "
                        f"{t['flat_ip']:8.1f}  ({ratios})",
                        flush=True,
                    )
                    best = min(t["knn"], t["knn_blas"], t["flat_ip"])
                    last = (
                        f"exact_kernels: n={n} d={d} queries={nq} numpy_ms={t['numpy']:.1f} best_faiss_ms={best:.1f} "
                        f"faiss_vs_numpy={best / t['numpy']:.2f}"
                    )
    print(last)


if __name__ == "__main__":
    main()
