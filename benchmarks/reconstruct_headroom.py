"""Is there a better k-sparse selection than `reconstruct`'s? Two searches side by side.

For held-out queries of a demo, at one k (paper solver, mean of ratios in dB):

- `reconstruct` as the API runs it (the default pool);
- `reconstruct` with every training example in the pool;
- `reconstruct` on the served pool with a beam-search start of width `--beam`
  (`strategies.reconstruct.reconstruct(beam_width=)`, exhaustive once the beam holds every subset);
- an exhaustive search over every k-subset of the `--support` examples with the largest
  weights in the optimum over the simplex of ALL training gradients (the mixture behind the
  any-selection ceiling, `relevance.ratio_upper_bound`), keeping `reconstruct`'s own
  selection when it is better;
- the grad_cos strategies that come closest (top-k, FL lambda=0.25, AIDE), and the
  any-selection ceiling itself (any k).

    .venv/bin/python benchmarks/reconstruct_headroom.py --demo chat --queries 30 --k 5
"""

from __future__ import annotations

import argparse
import itertools
import math
from pathlib import Path

import numpy as np
import torch

from exemplar.explain import Explainer
from exemplar.options import ExplainOptions
from exemplar.relevance import mean_of_ratios_db, ratio_upper_bound, selection_relevance
from exemplar.research.demos import held_out_queries, prepare
from exemplar.simplex import exact_simplex_weights
from exemplar.strategies.reconstruct import reconstruct, served_pool

COSINE = {
    "cos top-k": {"strategy": "topk"},
    "cos FL 0.25": {"strategy": "balanced", "lam": 0.25},
    "cos aide": {"strategy": "aide"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", default="chat")
    parser.add_argument("--root", type=Path, default=Path(".cache/demos"))
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--support", type=int, default=18, help="exhaustive search over this many examples")
    parser.add_argument("--beam", type=int, default=50, help="beam width of the beam-search start")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    explainer = Explainer.from_index(prepare(args.demo, args.root))
    queries = held_out_queries(explainer.store.path, args.queries)
    vectors = explainer.store.vectors_at(np.arange(explainer.store.n)).astype(np.float64)  # (n, d)
    centred = vectors - vectors.mean(axis=1, keepdims=True)
    k = args.k
    ratios: dict[str, list[float]] = {}
    print(
        f"{'query':>5}"
        + "".join(
            f"{name:>13}" for name in [*COSINE, "reconstruct", "all rows", f"beam {args.beam}", "exhaustive", "ceiling"]
        )
    )
    for qi, query in enumerate(queries):
        state = explainer.prepare(query)
        g = state.grad.astype(np.float64)
        cosine = {
            name: explainer.score(
                state, explainer.select(state, ExplainOptions(k=k, estimator="grad_cos", **kw))[0]
            ).ratio
            for name, kw in COSINE.items()
        }
        ours_rows, _, _ = explainer.select(state, ExplainOptions(k=k, strategy="reconstruct"))
        all_rows = reconstruct(g, vectors, k, solver="paper", pool_size=explainer.store.n)
        ours = explainer.score(state, ours_rows).ratio
        pool = served_pool(explainer.strategy_state, explainer.store).pool(g, k, None, explainer.config.pool_size)
        beamed = pool[
            reconstruct(
                g, explainer.store.vectors_at(pool), k, solver="paper", pool_size=pool.shape[0], beam_width=args.beam
            )
        ]
        weights = exact_simplex_weights(g - g.mean(), centred)  # (n,) the any-selection optimum
        top = np.argsort(-weights, kind="stable")[: args.support]
        exhaustive = max(
            [ours, *(selection_relevance(g, vectors[list(sub)]).ratio for sub in itertools.combinations(top, k))]
        )
        found = {
            **cosine,
            "reconstruct": ours,
            "all rows": selection_relevance(g, vectors[all_rows]).ratio,
            f"beam {args.beam}": explainer.score(state, beamed).ratio,
            "exhaustive": exhaustive,
            "ceiling": ratio_upper_bound(g, vectors),
        }
        for name, value in found.items():
            ratios.setdefault(name, []).append(value)
        print(f"{qi:>5}" + "".join(f"{v:>13.2f}" for v in found.values()))
    n = len(ratios["reconstruct"])
    print(f"{n} queries of the {args.demo} demo at k={k}; mean of ratios, dB (ceiling: any selection, any k)")
    for name, values in ratios.items():
        db = mean_of_ratios_db(values)
        print(
            f"{name:<12} {db:+.2f}"
            + ("" if math.isinf(db) else f"  ({db - mean_of_ratios_db(ratios['reconstruct']):+.2f} vs reconstruct)")
        )


if __name__ == "__main__":
    main()
