"""`reconstruct` variants side by side on a demo's held-out queries: greedy alone, greedy +
swaps over 100 candidates, greedy + swaps over 200, against AIDE (the best paper strategy at
k = 25 on chat) with Grad-Dot and DataInf. Mean of ratios in dB (the paper's aggregation,
paper solver) and seconds per query of each `reconstruct` variant.

    .venv/bin/python benchmarks/reconstruct_swaps.py --demo chat --queries 30
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from exemplar import selection
from exemplar.demos import prepare
from exemplar.explain import Explainer, ExplainOptions
from exemplar.relevance import mean_of_ratios_db
from exemplar.tasks import Example

VARIANTS = {"greedy, pool 100": (100, 0), "swaps, pool 100": (100, 2), "swaps, pool 200": (200, 2)}


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
    rows = [json.loads(line) for line in (explainer.store.path.parent / "test.jsonl").read_text().splitlines()]
    fields = ("text", "label") if explainer.store.manifest.task == "classification" else ("prompt", "response")
    ratios: dict[tuple[str, int], list[float]] = {}
    seconds: dict[tuple[str, int], float] = {}
    for row in rows[: args.queries]:
        state = explainer.prepare(Example(**{f: row[f] for f in fields}))
        for k in ks:
            for estimator in ("grad_dot", "datainf"):
                picked, _, _ = explainer.select(state, ExplainOptions(k=k, strategy="aide", estimator=estimator))
                ratios.setdefault((f"aide ({estimator})", k), []).append(explainer.score(state, picked).ratio)
            nearest = explainer.nearest(state, max(m for m, _ in VARIANTS.values()))
            for name, (m, sweeps) in VARIANTS.items():
                t0 = time.perf_counter()
                grads = explainer.store.vectors_at(nearest[:m])
                chosen = selection.reconstruct(state.grad, grads, k, solver="paper", pool_size=m, swap_sweeps=sweeps)
                seconds[(name, k)] = seconds.get((name, k), 0.0) + time.perf_counter() - t0
                ratios.setdefault((name, k), []).append(explainer.score(state, nearest[:m][chosen]).ratio)
    n = min(args.queries, len(rows))
    print(f"{n} queries of the {args.demo} demo; mean of ratios, dB (s/query for reconstruct)")
    names = [*(f"aide ({e})" for e in ("grad_dot", "datainf")), *VARIANTS]
    print(f"{'selection':<20}" + "".join(f"{'k=' + str(k):>16}" for k in ks))
    for name in names:
        cells = []
        for k in ks:
            cell = f"{mean_of_ratios_db(ratios[(name, k)]):+.2f}"
            if (name, k) in seconds:
                cell += f" ({seconds[(name, k)] / n:.2f} s)"
            cells.append(f"{cell:>16}")
        print(f"{name:<20}" + "".join(cells))


if __name__ == "__main__":
    main()
