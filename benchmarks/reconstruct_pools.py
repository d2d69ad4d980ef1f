"""How far can `reconstruct` go? Candidate pools side by side, against grad_cos top-k.

For held-out queries of a demo: the score (mean of ratios, dB) of `reconstruct` over
different candidate pools (100 / 500 centred-nearest gradients, the 100 best by cosine, and
their union) next to plain grad_cos top-k, plus the query vs training gradient norms
(a convex combination of smaller training gradients cannot reach a larger query gradient)
and, per query, a certified upper bound on the score of ANY selection of the whole index
(``relevance.ratio_upper_bound``: the optimum over the simplex of all n examples).

    .venv/bin/python benchmarks/reconstruct_pools.py --demo tweets --queries 30
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from exemplar.explain import Explainer
from exemplar.relevance import mean_of_ratios_db, ratio_upper_bound, selection_relevance
from exemplar.research.demos import held_out_queries, prepare
from exemplar.strategies import retrieve
from exemplar.strategies.reconstruct import reconstruct, served_pool


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", default="tweets")
    parser.add_argument("--root", type=Path, default=Path(".cache/demos"))
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    explainer = Explainer.from_index(prepare(args.demo, args.root))
    queries = held_out_queries(explainer.store.path, args.queries)
    ratios: dict[tuple[str, int], list[float]] = {}
    norms = []
    bounds = []
    everything = explainer.store.vectors_at(np.arange(explainer.store.n))  # (n, d)
    served = served_pool(explainer.strategy_state, explainer.store)
    started = time.perf_counter()
    for query in queries:
        state = explainer.prepare(query)
        norms.append(float(np.linalg.norm(state.grad)))
        bounds.append(ratio_upper_bound(state.grad, everything))
        grad_cos = explainer.estimators.get("grad_cos")
        cosine, _ = retrieve(explainer.store, grad_cos, state.query, "most_helpful", 100)
        near100 = served.candidates(state.grad, 100, 0)
        pools = {
            "near100": near100,
            "near500": served.candidates(state.grad, 500, 0),
            "cos100": cosine,
            "union": np.unique(np.concatenate([cosine, near100])),
        }
        for k in (5, 25):
            top = explainer.store.vectors_at(cosine[:k])
            ratios.setdefault(("grad_cos top-k", k), []).append(selection_relevance(state.grad, top).ratio)
            for name, pool in pools.items():
                grads = explainer.store.vectors_at(pool)
                picked = reconstruct(state.grad, grads, k, solver="paper", pool_size=len(pool))
                ratios.setdefault((f"reconstruct {name}", k), []).append(
                    selection_relevance(state.grad, grads[picked]).ratio
                )
    print(f"{len(norms)} queries of the {args.demo} demo in {time.perf_counter() - started:.0f} s")
    print(f"{'selection':<24}{'k=5 dB':>9}{'k=25 dB':>9}")
    for name in sorted({n for n, _ in ratios}):
        print(f"{name:<24}{mean_of_ratios_db(ratios[(name, 5)]):>9.2f}{mean_of_ratios_db(ratios[(name, 25)]):>9.2f}")
    bound = mean_of_ratios_db(bounds)
    print(f"{'bound: any selection, any k':<24}{bound:>9.2f}{bound:>9.2f}")
    cos = {k: mean_of_ratios_db(ratios[("grad_cos top-k", k)]) for k in (5, 25)}
    print(f"bound - grad_cos top-k: k=5 {bound - cos[5]:+.2f} dB, k=25 {bound - cos[25]:+.2f} dB")
    train = np.asarray(explainer.store.norms)
    print(
        f"gradient norm: queries median {np.median(norms):.2f}, training median {np.median(train):.2f}, training p90 {np.percentile(train, 90):.2f}"
    )


if __name__ == "__main__":
    main()
