"""The cost estimate against the time it estimates: `Explainer.cost` (exemplar/cost.py) beside
the measured selection and full-space scoring time of the same request, one request at a
time, on a demo index, on this machine.

    .venv/bin/python benchmarks/cost.py                 # tweets demo, 2 queries per request
    .venv/bin/python benchmarks/cost.py --quick         # tiny demo, 1 query

Each row: the request, the estimate (before), the measured seconds (selection and scoring; the
query's own forward/backward is left out of both) and estimate / measured. The API refuses a
request whose estimate is above its limit, so an estimate below the measured time lets through
a request that may run past the deadline (then stopped there), and one far above refuses a
request that would have run. The last line is
`cost: rows=<n> median_ratio=<r> min_ratio=<lo> max_ratio=<hi>`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from exemplar.explain import Explainer
from exemplar.options import ExplainOptions
from exemplar.research.demos import prepare
from exemplar.tasks import Example

REQUESTS = [  # (strategy, k, pool_size or None, solver, score_space)
    ("reconstruct", 5, None, "paper", "full"),  # the default request
    ("reconstruct", 10, None, "paper", "full"),
    ("reconstruct", 25, None, "paper", "full"),
    ("reconstruct", 50, None, "paper", "projected"),
    ("reconstruct", 50, 2000, "paper", "projected"),
    ("reconstruct", 10, 2000, "exact", "projected"),
    ("reconstruct", 25, 300, "exact", "projected"),
    ("balanced", 10, None, "paper", "full"),
    ("balanced", 50, 2000, "paper", "projected"),
    ("divine", 50, 2000, "paper", "projected"),
    ("aide", 50, 2000, "paper", "projected"),
    ("topk", 25, None, "paper", "full"),
    ("topk", 50, None, "paper", "full"),
    ("auto", 10, None, "paper", "full"),
]


def queries(index: Path, count: int) -> list[Example]:
    rows = [json.loads(line) for line in (index.parent / "test.jsonl").read_text().splitlines()[:count]]
    return [
        Example(text=r["text"], label=r.get("label"))
        if "text" in r
        else Example(prompt=r["prompt"], response=r["response"])
        for r in rows
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", default="tweets")
    parser.add_argument("--root", type=Path, default=Path(".cache/demos"))
    parser.add_argument("--queries", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="the tiny demo, one query")
    args = parser.parse_args()
    demo, count = ("tiny", 1) if args.quick else (args.demo, args.queries)
    index = prepare(demo, args.root)
    explainer = Explainer.from_index(index)
    states = [explainer.prepare(q, keep_factors=True) for q in queries(index, count)]
    explainer.choose(states[0], ExplainOptions())  # warm-up: first-use caches, and the row clock's first measure
    print(f"{demo} demo, n={explainer.store.n}; seconds per row measured so far: {explainer.rows.seconds:.3f}")
    print(f"{'request':<42}{'estimate s':>11}{'measured s':>11}{'ratio':>8}")
    ratios = []
    for name, k, pool, solver, space in REQUESTS:
        options = ExplainOptions(strategy=name, k=k, pool_size=pool, solver=solver, score_space=space)
        estimated = explainer.cost(options).seconds
        t0 = time.perf_counter()
        for state in states:
            explainer.choose(state, options)
        measured = (time.perf_counter() - t0) / len(states)
        ratios.append(estimated / measured)
        label = f"{name} k={k} pool={pool or 'default'} {solver} {space}"
        print(f"{label:<42}{estimated:>11.2f}{measured:>11.2f}{ratios[-1]:>8.2f}", flush=True)
    r = np.asarray(ratios)
    print(f"cost: rows={len(r)} median_ratio={np.median(r):.2f} min_ratio={r.min():.2f} max_ratio={r.max():.2f}")


if __name__ == "__main__":
    main()
