"""Why heavy work must stop between steps: light explains beside a low-priority thread in one process.

The API's heavy lane is a thread at nice +10 (`exemplar.threads.start_heavy_thread`): the OS
gives it little of a contended core, but the interpreter lock (GIL) is shared by every thread of
the process, and the OS priority does not reach it. This measures light explains (the defaults:
`reconstruct`, k = 5, full-space score) one after another in-process, alone, then beside a
nice +10 thread doing one of three kinds of work without pause:

- `lapack`: a QR factorisation of a 2,432 x 2,002 matrix over and over (reconstruct's screening
  set-up); numpy releases the GIL inside LAPACK, so only the cores and memory are shared;
- `small`: 30 x 30 matrix products in a Python loop (the shape of the solvers' inner loops),
  holding the GIL between short calls;
- `python`: a pure Python loop, holding the GIL all the time.

    .venv/bin/python benchmarks/gil_contention.py [--queries 15]

Last line: `gil: lapack=<x> small=<x> python=<x>`, light time beside each over light time alone.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

import numpy as np
import torch

from exemplar.explain import Explainer
from exemplar.options import ExplainOptions
from exemplar.research.demos import prepare
from exemplar.tasks import Example
from exemplar.threads import limit_blas_threads, lower_thread_priority

KINDS = ("lapack", "small", "python")


def busy(kind: str, stop: threading.Event) -> None:
    """Work of one `kind` until `stop`, at the heavy lane's priority with one torch thread."""
    lower_thread_priority()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    big = rng.standard_normal((2432, 2002))
    while not stop.is_set():
        if kind == "lapack":
            np.linalg.qr(big, mode="r")
        elif kind == "small":
            x = rng.standard_normal((30, 30))
            for _ in range(2000):
                x = x @ x.T / 30
        else:
            total = 0
            for i in range(200_000):
                total += i


def light(explainer: Explainer, queries: list[Example]) -> tuple[float, float]:
    """Seconds for all `queries` one after another, and the slowest one."""
    times = []
    for query in queries:
        t0 = time.perf_counter()
        explainer.explain(query, ExplainOptions(k=5))
        times.append(time.perf_counter() - t0)
    return sum(times), max(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", default="tweets")
    parser.add_argument("--root", type=Path, default=Path(".cache/demos"))
    parser.add_argument("--queries", type=int, default=15)
    args = parser.parse_args()
    limit_blas_threads()
    index = prepare(args.demo, args.root)
    explainer = Explainer.from_index(index)
    rows = [json.loads(line) for line in (index.parent / "test.jsonl").read_text().splitlines()][: args.queries]
    queries = [Example(id=f"q{i}", text=r["text"], label=r.get("label")) for i, r in enumerate(rows)]
    light(explainer, queries[:3])  # warm-up
    alone, alone_max = light(explainer, queries)
    print(f"{'beside':<10}{'light s':>10}{'slowest s':>11}{'x alone':>9}")
    print(f"{'nothing':<10}{alone:>10.2f}{alone_max:>11.2f}{1.0:>9.2f}")
    ratios = {}
    for kind in KINDS:
        stop = threading.Event()
        thread = threading.Thread(target=busy, args=(kind, stop))
        thread.start()
        time.sleep(0.5)
        total, slowest = light(explainer, queries)
        stop.set()
        thread.join()
        ratios[kind] = total / alone
        print(f"{kind:<10}{total:>10.2f}{slowest:>11.2f}{ratios[kind]:>9.2f}")
    print("gil: " + " ".join(f"{kind}={ratio:.2f}" for kind, ratio in ratios.items()))


if __name__ == "__main__":
    main()
