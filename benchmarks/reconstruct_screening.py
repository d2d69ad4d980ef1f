"""`reconstruct`'s batched screening against one-at-a-time screening, side by side in one run.

Each step of `reconstruct` (one greedy addition, or one position's swaps) scores every open
pool row as an extension of the current selection. The served code screens them all at once
(`ReducedScorer.extensions`: bordered solves or batched eigen-solves on Gram matrices,
certified, with a one-at-a-time fallback); the reference here is what it replaced, every
candidate scored alone in the pool's coordinates (`ReducedScorer.ratio`). Both run on the
same served pools (`ReconstructPool.pool`) of a demo's held-out queries; the script
checks that they pick the same examples and prints seconds per query and the speed-up.

    .venv/bin/python benchmarks/reconstruct_screening.py --demo tweets --queries 20
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from exemplar.explain import Explainer
from exemplar.relevance import mean_of_ratios_db
from exemplar.research.demos import held_out_queries, prepare
from exemplar.strategies.reconstruct import reconstruct, served_pool
from exemplar.strategies.reduced import ReducedScorer


def one_at_a_time(self: ReducedScorer, base: list[int], cands: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
    """The reference screening: each extended subset scored alone."""
    return np.array([self.ratio([*base, int(j)]) for j in cands])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", default="tweets")
    parser.add_argument("--root", type=Path, default=Path(".cache/demos"))
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--ks", default="5,10,25")
    parser.add_argument("--solver", default="paper", choices=["paper", "exact"])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ks = [int(k) for k in args.ks.split(",")]
    explainer = Explainer.from_index(prepare(args.demo, args.root))
    served = served_pool(explainer.strategy_state, explainer.store)
    served.centred_gram()
    queries = held_out_queries(explainer.store.path, args.queries)
    batched = ReducedScorer.extensions
    seconds: dict[tuple[str, int], float] = {}
    ratios: dict[tuple[str, int], list[float]] = {}
    differ = 0
    for query in queries:
        state = explainer.prepare(query)
        for k in ks:
            pool = served.pool(state.grad, k, None, explainer.config.pool_size)
            vectors = explainer.store.vectors_at(pool)
            picked = {}
            for name, screen in (("one at a time", one_at_a_time), ("batched", batched)):
                ReducedScorer.extensions = screen  # type: ignore[method-assign]
                try:
                    t0 = time.perf_counter()
                    picked[name] = reconstruct(state.grad, vectors, k, solver=args.solver, pool_size=pool.shape[0])
                    seconds[(name, k)] = seconds.get((name, k), 0.0) + time.perf_counter() - t0
                finally:
                    ReducedScorer.extensions = batched  # type: ignore[method-assign]
                rows = pool[picked[name]]
                ratios.setdefault((name, k), []).append(explainer.score(state, rows, args.solver).ratio)
            differ += picked["batched"].tolist() != picked["one at a time"].tolist()
    n = len(queries)
    print(f"{n} queries of the {args.demo} demo, solver={args.solver}, threads={args.threads}")
    print("s/query for selection.reconstruct on the served pool (mean of ratios, dB)")
    print(f"{'screening':<16}" + "".join(f"{'k=' + str(k):>20}" for k in ks))
    for name in ("one at a time", "batched"):
        cells = [f"{seconds[(name, k)] / n:.3f} s ({mean_of_ratios_db(ratios[(name, k)]):+.2f})" for k in ks]
        print(f"{name:<16}" + "".join(f"{cell:>20}" for cell in cells))
    speedups = [seconds[("one at a time", k)] / seconds[("batched", k)] for k in ks]
    print(f"{'speed-up':<16}" + "".join(f"{s:>19.1f}x" for s in speedups))
    print(f"selections that differ: {differ} of {n * len(ks)}")


if __name__ == "__main__":
    main()
