"""Per-stage latency of explanations on a demo index, and the score per strategy and k.

Runs the real Explainer (same code the API calls) on held-out test queries of the demo and
prints medians per stage plus the mean-of-ratios score (paper.md section 1) per strategy and k.

    .venv/bin/python benchmarks/explain_latency.py --demo tweets --queries 50
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from exemplar.explain import Explainer
from exemplar.relevance import mean_of_ratios_db
from exemplar.research.demos import held_out_queries, prepare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", default="tweets")
    parser.add_argument("--root", type=Path, default=Path(".cache/demos"))
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    index_dir = prepare(args.demo, args.root)
    started = time.perf_counter()
    explainer = Explainer.from_index(index_dir)
    print(
        f"index {index_dir}: {explainer.store.n} examples, {explainer.store.manifest.dims} dims, opened in {time.perf_counter() - started:.1f} s"
    )
    queries = held_out_queries(index_dir, args.queries)
    print(f"{len(queries)} held-out queries, threads={args.threads}")
    print(
        f"{'strategy':<10}{'k':>4}{'score dB (mean of ratios)':>28}{'median dB':>11}{'> 0 dB':>8}{'gradient ms':>13}{'select ms':>11}{'score ms':>10}{'total ms':>10}"
    )
    for strategy in ("topk", "balanced", "random", "reconstruct"):
        for k in (1, 5, 10, 25):
            results = [explainer.explain(q, k=k, strategy=strategy, seed=i) for i, q in enumerate(queries)]
            ratios = [r.score_ratio for r in results]
            dbs = [r.score_db for r in results]
            med = {
                s: statistics.median(r.timings_ms[s] for r in results)
                for s in ("gradient", "selection", "score", "total")
            }
            print(
                f"{strategy:<10}{k:>4}{mean_of_ratios_db(ratios):>28.2f}{float(np.median(dbs)):>11.2f}{np.mean(np.array(dbs) > 0):>8.0%}"
                f"{med['gradient']:>13.1f}{med['selection']:>11.2f}{med['score']:>10.2f}{med['total']:>10.1f}"
            )


if __name__ == "__main__":
    main()
