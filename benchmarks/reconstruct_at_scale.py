"""Where `reconstruct`'s pool comes from on a large index: a scan, the directions index, or the
inner-product files.

On the large demo (117,000 rows, `index-builder demo large`), for held-out queries: the pool
`reconstruct` takes from a scan of every row (`preset="exact"`) is the reference. For each way
of finding candidates without a scan, the script prints how many of the reference's nearest
(after centring) and most aligned rows are among the candidates, how many candidates there
were, and how much the best selection `reconstruct` makes from the resulting pool loses
against the reference pool's (projected dB, k = 10, median and mean over queries):

- directions: `search_directions` (the shipped path: HNSW over centred unit directions);
- inner-product bands: the top `2m` rows by inner product with `g`, the centred `g` and its
  negation in every norm-bucket file of the search index (a first design, kept here as the
  baseline it was measured against).

    .venv/bin/python benchmarks/reconstruct_at_scale.py --queries 40
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from exemplar.explain import Explainer
from exemplar.relevance import selection_relevance
from exemplar.research.demos import prepare
from exemplar.search import PRESET_PARAMS, FaissSearch, _search_params
from exemplar.store import FaissGradientStore
from exemplar.strategies.reconstruct import ReconstructPool, reconstruct_selections
from exemplar.tasks import Example

K = 10
M = 100  # the default pool size: m nearest and m aligned


def band_candidates(search: FaissSearch, g: np.ndarray, fetch: int) -> np.ndarray:
    centred = g - g.mean()
    q = np.ascontiguousarray(np.stack([g, centred, -centred]), dtype=np.float32)
    found = []
    for part in search.parts:
        qp = np.pad(q, ((0, 0), (0, part.pad))) if part.pad else q
        n = min(fetch, part.index.ntotal)
        _, rows = part.index.search(qp, n, params=_search_params(part.index, PRESET_PARAMS["balanced"], n))
        found.append(rows[rows >= 0])
    return np.unique(np.concatenate(found))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    index_dir = prepare("large", ".cache/demos")
    explainer = Explainer.from_index(index_dir)
    store = explainer.store
    if not (isinstance(store, FaissGradientStore) and isinstance(store.searcher, FaissSearch)):
        raise SystemExit("the large demo's index must be approximate (rebuild it: index-builder demo large)")
    pools = ReconstructPool(store)
    norms = np.asarray(store.norms, dtype=np.float64)
    means = np.asarray(store.row_means, dtype=np.float64)

    def best_db(g: np.ndarray, pool: np.ndarray) -> float:
        found = reconstruct_selections(g, store.vectors_at(pool), K, solver="paper", pool_size=pool.size)
        return max(selection_relevance(g, store.vectors_at(pool[s])).db for s in found)

    rows = [json.loads(line) for line in (index_dir.parent / "test.jsonl").read_text().splitlines()]
    stats: dict[str, list[tuple[float, float, float, float, float]]] = {"directions": [], "inner-product bands": []}
    used = 0
    for row in rows:
        if used == args.queries:
            break
        try:
            state = explainer.prepare(Example(text=row["text"]))
        except Exception:  # longer than the index's max_length: the service refuses it too
            continue
        used += 1
        g = np.asarray(state.grad, dtype=np.float64)
        d = g.size
        dots = (np.asarray(store.vectors, dtype=np.float32) @ g.astype(np.float32)).astype(np.float64)
        dist2 = norms**2 - d * means**2 - 2.0 * (dots - d * means * g.mean())
        near = set(np.argsort(dist2, kind="stable")[:M].tolist())
        aligned = set(np.argsort(-dots / norms, kind="stable")[:M].tolist())
        reference = best_db(g, pools.candidates(g, M, M, mixture=True, preset="exact"))
        for name in stats:
            started = time.perf_counter()
            if name == "directions":  # what `ReconstructPool.candidates` does with the "balanced" preset
                found = store.search_directions(np.stack([g, -g]).astype(np.float32), 3 * M, "balanced")
            else:
                found = band_candidates(store.searcher, g, 2 * M)
            pool = pools.choose_among(g, found, M, M, mixture=True)
            ms = (time.perf_counter() - started) * 1e3
            hits = set(found.tolist())
            stats[name].append(
                (len(near & hits) / M, len(aligned & hits) / M, found.size, reference - best_db(g, pool), ms)
            )
    print(f"{used} queries, k = {K}, pool size {M}, preset balanced, {store.n:,} rows")
    print(
        f"{'candidates from':<22}{'near found':>11}{'aligned found':>14}{'candidates':>11}{'gap dB median':>14}"
        f"{'mean':>7}{'ms':>6}"
    )
    for name, values in stats.items():
        a = np.asarray(values)
        print(
            f"{name:<22}{a[:, 0].mean():11.2f}{a[:, 1].mean():14.2f}{a[:, 2].mean():11.0f}"
            f"{statistics.median(a[:, 3]):14.3f}{a[:, 3].mean():7.3f}{statistics.median(a[:, 4]):6.0f}"
        )
    d = np.asarray(stats["directions"])
    print(
        f"reconstruct_at_scale: n={store.n} near_found={d[:, 0].mean():.2f} aligned_found={d[:, 1].mean():.2f} "
        f"gap_db_median={statistics.median(d[:, 3]):.3f}"
    )


if __name__ == "__main__":
    main()
