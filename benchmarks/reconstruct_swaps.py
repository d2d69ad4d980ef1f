"""`reconstruct` variants side by side on a demo's held-out queries, against the best paper
strategies: before (greedy + swaps over the 8k nearest gradients), + the most cosine-aligned
rows in the pool, + the second start from the pool's exact simplex fit, + the support of the
best mixture of the whole store in the pool (the default), next to
AIDE with Grad-Dot and DataInf and the Grad-Cos strategies that beat it (top-k, FL lambda=0.25,
AIDE). Mean of ratios in dB (the paper's aggregation, paper solver), seconds per query of each
`reconstruct` variant, and per estimator the margin of the default over its best strategy here.

    .venv/bin/python benchmarks/reconstruct_swaps.py --demo chat --queries 30 --threads 1
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from exemplar.explain import Explainer
from exemplar.options import ExplainOptions
from exemplar.relevance import mean_of_ratios_db
from exemplar.research.demos import held_out_queries, prepare
from exemplar.strategies.reconstruct import RECONSTRUCT_POOL_PER_K, reconstruct, served_pool

PAPER = {
    "aide (grad_dot)": ("grad_dot", {"strategy": "aide"}),
    "aide (datainf)": ("datainf", {"strategy": "aide"}),
    "top-k (grad_cos)": ("grad_cos", {"strategy": "topk"}),
    "FL 0.25 (grad_cos)": ("grad_cos", {"strategy": "balanced", "lam": 0.25}),
    "aide (grad_cos)": ("grad_cos", {"strategy": "aide"}),
}
VARIANTS = {  # name: (nearest per k, aligned per k, simplex start, mixture support in the pool)
    "before: 8k nearest": (8, 0, False, False),
    "+ 4k/4k aligned": (RECONSTRUCT_POOL_PER_K, RECONSTRUCT_POOL_PER_K, False, False),
    "+ simplex start": (RECONSTRUCT_POOL_PER_K, RECONSTRUCT_POOL_PER_K, True, False),
    "+ mixture rows": (RECONSTRUCT_POOL_PER_K, RECONSTRUCT_POOL_PER_K, True, True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", default="chat")
    parser.add_argument("--root", type=Path, default=Path(".cache/demos"))
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--ks", default="5,10,25")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ks = [int(k) for k in args.ks.split(",")]
    explainer = Explainer.from_index(prepare(args.demo, args.root))
    t0 = time.perf_counter()
    served = served_pool(explainer.strategy_state, explainer.store)
    served.centred_gram()  # built once per served index, on the first reconstruct
    print(f"whole-store Gram matrix for the mixture rows: {time.perf_counter() - t0:.2f} s, once")
    queries = held_out_queries(explainer.store.path, args.queries)
    floor = explainer.config.pool_size
    ratios: dict[tuple[str, int], list[float]] = {}
    seconds: dict[tuple[str, int], float] = {}
    for query in queries:
        state = explainer.prepare(query)
        for k in ks:
            for name, (estimator, kwargs) in PAPER.items():
                picked, _, _ = explainer.select(state, ExplainOptions(k=k, estimator=estimator, **kwargs))
                ratios.setdefault((name, k), []).append(explainer.score(state, picked).ratio)
            for name, (near, aligned, simplex_start, mixture) in VARIANTS.items():
                t0 = time.perf_counter()
                pool = served.candidates(
                    state.grad, max(floor, near * k), max(floor, aligned * k) if aligned else 0, mixture=mixture
                )
                chosen = reconstruct(
                    state.grad,
                    explainer.store.vectors_at(pool),
                    k,
                    solver="paper",
                    pool_size=pool.shape[0],
                    simplex_start=simplex_start,
                )
                seconds[(name, k)] = seconds.get((name, k), 0.0) + time.perf_counter() - t0
                ratios.setdefault((name, k), []).append(explainer.score(state, pool[chosen]).ratio)
    n = len(queries)
    db = {key: mean_of_ratios_db(values) for key, values in ratios.items()}
    print(f"{n} queries of the {args.demo} demo; mean of ratios, dB (s/query for reconstruct)")
    print(f"{'selection':<22}" + "".join(f"{'k=' + str(k):>16}" for k in ks))
    for name in [*PAPER, *VARIANTS]:
        cells = [
            f"{db[(name, k)]:+.2f}" + (f" ({seconds[(name, k)] / n:.2f} s)" if (name, k) in seconds else "") for k in ks
        ]
        print(f"{name:<22}" + "".join(f"{cell:>16}" for cell in cells))
    default = list(VARIANTS)[-1]
    for estimator in ("grad_dot", "datainf", "grad_cos"):
        mine = [name for name, (e, _) in PAPER.items() if e == estimator]
        margins = [db[(default, k)] - max(db[(name, k)] for name in mine) for k in ks]
        print(f"margin over {estimator:<10}" + "".join(f"{m:>+16.2f}" for m in margins))


if __name__ == "__main__":
    main()
