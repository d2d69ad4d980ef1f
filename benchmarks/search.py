"""Search index types and presets side by side: build time, size, per-query latency, recall@100.

Synthetic vectors shaped like projected gradients (clusters of different sizes and spreads,
heavy-tailed norms), D = 1024, written to a memory-mapped file as the store keeps them.
For each N, every index type is built with the same code the index builder runs
(`exemplar.search.build_faiss_shards`) and searched through `FaissSearch` exactly as the
service does: the index returns `k_factor * 100` rows, which are re-scored exactly against
the memory-mapped vectors, and the best 100 are compared with the exact top-100
(`exact_top_k`, the "exact" preset). Latency is per single query, one at a time, including
the exact re-scoring; build time includes training.

    .venv/bin/python benchmarks/search.py --quick                  # N = 200k, under 2 minutes
    .venv/bin/python benchmarks/search.py --n 100000 --n 1000000 --plot docs/search.png

The last line is `search: preset=<type>/<preset> recall_at_100=<x> ms_per_query=<y> n=<N>`:
the fastest (type, preset) with recall@100 >= 0.95 at the largest N.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from exemplar.search import (
    PRESET_PARAMS,
    FaissSearch,
    Preset,
    build_faiss_shards,
    exact_top_k,
    factory_string,
    norm_buckets_for,
)

TOP = 100
RECALL_TARGET = 0.95
GEN_CHUNK = 50_000
NORM_SIGMA = 1.4
LATENT_RANK = 32
CLUSTERS = 512
NOISE = 0.25
"""Std of log-norms: 1.41 measured on the chat demo's 600 LoRA gradients."""


@dataclass
class Row:
    n: int
    index: str
    preset: str
    build_s: float
    index_mb: float
    ms_per_query: float
    p99_ms: float
    recall: float


def synthetic(path: Path, n: int, d: int, n_queries: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, d) float32 rows in a .npy memmap plus (n_queries, d) held-out queries from the same mixture.

    Shaped like the chat demo's projected LoRA gradients (600 x 7680, measured): directions
    near a low-dimensional subspace with a decaying spectrum (top 10 directions hold ~0.75
    of the variance of the unit vectors; chat: 0.80), clustered (median cosine to the
    nearest other row ~0.87; chat: 0.87; mean |cosine| ~0.24; chat: 0.20), many small
    clusters and a few big ones, and log-normal norms with the chat demo's spread
    (std of log-norms 1.41).
    """
    rng = np.random.default_rng(seed)
    spectrum = np.sqrt(1.0 / np.arange(1, LATENT_RANK + 1)).astype(np.float32)
    basis = np.linalg.qr(rng.standard_normal((d, LATENT_RANK)))[0].T.astype(np.float32)  # (rank, d)
    centres = rng.standard_normal((CLUSTERS, LATENT_RANK)).astype(np.float32) * spectrum
    weights = rng.pareto(1.2, CLUSTERS) + 1.0  # a few big clusters, many small ones
    weights /= weights.sum()

    def draw(m: int) -> np.ndarray:
        c = rng.choice(CLUSTERS, size=m, p=weights)
        latent = centres[c] + 0.5 * rng.standard_normal((m, LATENT_RANK), dtype=np.float32) * spectrum
        rows = latent @ basis
        rows /= np.linalg.norm(rows, axis=1, keepdims=True)
        rows += NOISE * rng.standard_normal((m, d), dtype=np.float32) / np.sqrt(d)
        rows /= np.linalg.norm(rows, axis=1, keepdims=True)
        return rows * rng.lognormal(0.0, NORM_SIGMA, (m, 1)).astype(np.float32)

    vectors = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
    for start in range(0, n, GEN_CHUNK):
        vectors[start : start + GEN_CHUNK] = draw(min(GEN_CHUNK, n - start))
    vectors.flush()
    del vectors
    return np.load(path, mmap_mode="r"), draw(n_queries)


def truth(vectors: np.ndarray, queries: np.ndarray) -> list[set[int]]:
    """Exact top-100 rows per query, by blocked matrix products."""
    n = vectors.shape[0]
    best_s = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_r = np.zeros((len(queries), 0), dtype=np.int64)
    for start in range(0, n, 65536):
        s = queries @ np.asarray(vectors[start : start + 65536]).T  # (q, chunk)
        r = np.broadcast_to(np.arange(start, start + s.shape[1]), s.shape)
        s, r = np.concatenate([best_s, s], axis=1), np.concatenate([best_r, r], axis=1)
        keep = np.argpartition(-s, TOP - 1, axis=1)[:, :TOP]
        best_s, best_r = np.take_along_axis(s, keep, 1), np.take_along_axis(r, keep, 1)
    return [set(row.tolist()) for row in best_r]


def timed_queries(
    search: object, vectors: np.ndarray, queries: np.ndarray, preset: str | Preset
) -> tuple[list[float], list[set[int]]]:
    times, found = [], []
    for q in queries:
        t0 = time.perf_counter()
        if preset == "exact":
            _, rows = exact_top_k(vectors, q, TOP)
        else:
            _, rows = search.search(q, TOP, preset)  # type: ignore[attr-defined]  # exactly re-scored, best first
            rows = rows[:TOP]
        times.append((time.perf_counter() - t0) * 1e3)
        found.append(set(rows.tolist()))
    return times, found


def sweep_presets(spec: str) -> list[Preset]:
    """Extra search efforts for --sweep: wider HNSW beams or more IVF lists than the presets."""
    if spec.startswith("HNSW"):
        return [Preset(f"ef{ef}", 0.0, 0, ef, 2) for ef in (384, 512, 768, 1024)]
    if spec.startswith("IVF"):
        return [Preset(f"probe1/{d}", 1 / d, 8, 0, 2) for d in (16, 8, 4)]
    return []


def run_n(
    n: int, d: int, n_queries: int, types: list[str], workdir: Path, seed: int, norm_buckets: bool, sweep: bool
) -> list[Row]:
    t0 = time.perf_counter()
    vectors, queries = synthetic(workdir / f"vectors-{n}.npy", n, d, n_queries, seed)
    gen_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    expected = truth(vectors, queries)
    norms = np.concatenate([np.linalg.norm(vectors[a : a + 65536], axis=1) for a in range(0, n, 65536)])
    print(
        f"N={n}: data {gen_s:.1f} s, exact top-{TOP} of {n_queries} queries {time.perf_counter() - t0:.1f} s",
        flush=True,
    )
    rows: list[Row] = []
    exact_ms, _ = timed_queries(None, vectors, queries[:20], "exact")
    rows.append(Row(n, "Flat", "exact", 0.0, 0.0, float(np.mean(exact_ms)), float(np.percentile(exact_ms, 99)), 1.0))
    print_row(rows[-1])
    for name in types:
        buckets = norm_buckets_for(n, 1) if norm_buckets else 1
        spec = factory_string(name, n // buckets, d)
        out = workdir / f"{name}-{n}"
        out.mkdir()
        t0 = time.perf_counter()
        build_faiss_shards(vectors, norms, spec, 1, out, buckets=buckets, seed=seed)
        build_s = time.perf_counter() - t0
        size_mb = sum(f.stat().st_size for f in out.iterdir()) / 2**20
        search = FaissSearch(vectors, norms, sorted(out.iterdir()))
        label = f"{spec} x{buckets}"

        timed_queries(search, vectors, queries[:5], "balanced")  # warm the page cache
        efforts: list[str | Preset] = [*PRESET_PARAMS, *(sweep_presets(spec) if sweep else [])]
        for preset in efforts:
            ms, found = timed_queries(search, vectors, queries, preset)
            recall = float(np.mean([len(f & e) / TOP for f, e in zip(found, expected, strict=True)]))
            name = preset.name if isinstance(preset, Preset) else preset
            rows.append(Row(n, label, name, build_s, size_mb, float(np.mean(ms)), float(np.percentile(ms, 99)), recall))
            print_row(rows[-1])
        del search
        gc.collect()
        for f in out.iterdir():
            f.unlink()
    return rows


def print_row(r: Row) -> None:
    print(
        f"  {r.index:<18}{r.preset:<10}build {r.build_s:7.1f} s  index {r.index_mb:8.1f} MiB  "
        f"{r.ms_per_query:7.2f} ms/query (p99 {r.p99_ms:6.2f})  recall@{TOP} {r.recall:.3f}",
        flush=True,
    )


def plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r.n for r in rows})
    fig, axes = plt.subplots(1, len(sizes), figsize=(6 * len(sizes), 4.5), squeeze=False)
    for ax, n in zip(axes[0], sizes, strict=True):
        for r in (r for r in rows if r.n == n):
            marker = {"exact": "s", "balanced": "o", "fast": "^"}.get(r.preset, "x")
            ax.scatter(r.ms_per_query, r.recall, marker=marker)
            ax.annotate(f"{r.index} {r.preset}", (r.ms_per_query, r.recall), fontsize=7)
        ax.axhline(RECALL_TARGET, color="grey", linestyle=":")
        ax.axvline(10, color="grey", linestyle=":")
        ax.set_xscale("log")
        ax.set_xlabel("ms per query (incl. exact re-scoring)")
        ax.set_ylabel(f"recall@{TOP}")
        ax.set_title(f"N = {n:,}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 200k, HNSW and IVF-SQfp16 only (under 2 minutes)")
    parser.add_argument("--n", type=int, action="append", help="index sizes (repeatable; default 100k and 1M)")
    parser.add_argument("--dims", type=int, default=1024)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--types", default="ivf,ivf_sq,ivf_pq,hnsw", help="index types (names or factory strings)")
    parser.add_argument("--threads", type=int, default=0, help="FAISS OpenMP threads (0: all cores)")
    parser.add_argument("--plot", type=Path, help="write a recall-vs-latency PNG here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-buckets", action="store_true", help="one FAISS file per index (no norm buckets)")
    parser.add_argument("--sweep", action="store_true", help="also try wider HNSW beams / more IVF lists")
    args = parser.parse_args()
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    sizes = [200_000] if args.quick else (args.n or [100_000, 1_000_000])
    types = ["hnsw", "ivf_sq"] if args.quick else args.types.split(",")
    queries = 100 if args.quick else args.queries
    started = time.perf_counter()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="exemplar-search-") as tmp:
        for n in sizes:
            rows += run_n(n, args.dims, queries, types, Path(tmp), args.seed, not args.no_buckets, args.sweep)
    if args.plot:
        plot(rows, args.plot)
    print(f"total {time.perf_counter() - started:.0f} s")
    largest = [r for r in rows if r.n == max(sizes) and r.recall >= RECALL_TARGET and r.preset in PRESET_PARAMS]
    if not largest:
        print(f"search: preset=none recall_at_100=0 ms_per_query=0 n={max(sizes)}")
        return
    best = min(largest, key=lambda r: r.ms_per_query)
    print(
        f"search: preset={best.index}/{best.preset} recall_at_100={best.recall:.3f} "
        f"ms_per_query={best.ms_per_query:.2f} n={best.n}"
    )


if __name__ == "__main__":
    main()
