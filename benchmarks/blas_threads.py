"""`reconstruct` with numpy's default BLAS threads against one BLAS thread, idle and beside a busy process.

The API and worker cap numpy's BLAS (OpenBLAS) pool at one thread (`exemplar.threads`). This
measures why, in one run: `Explainer.select` with `strategy="reconstruct"` on a demo's held-out
queries, BLAS at its default (one thread per core) and at 1, first on an otherwise idle
machine, then while a second process keeps the cores busy with torch matrix products (as a
worker running a job beside the API would). Seconds per query and the ratio.

    .venv/bin/python benchmarks/blas_threads.py --demo tweets --queries 8 --k 10
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch
from threadpoolctl import threadpool_info, threadpool_limits

from exemplar.explain import Explainer
from exemplar.options import ExplainOptions
from exemplar.research.demos import held_out_queries, prepare
from exemplar.strategies.reconstruct import served_pool

BUSY = """
import torch, time
torch.set_num_threads({threads})
a = torch.randn(1500, 1500)
stop = time.time() + {seconds}
while time.time() < stop:
    a @ a
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", default="tweets")
    parser.add_argument("--root", type=Path, default=Path(".cache/demos"))
    parser.add_argument("--queries", type=int, default=8)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2, help="torch threads here and in the busy process")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    default = max(info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas")
    explainer = Explainer.from_index(prepare(args.demo, args.root))
    served_pool(explainer.strategy_state, explainer.store).centred_gram()  # built once per served index
    states = [explainer.prepare(q) for q in held_out_queries(explainer.store.path, args.queries)]
    options = ExplainOptions(k=args.k, strategy="reconstruct")

    def seconds_per_query(blas: int) -> float:
        with threadpool_limits(limits=blas, user_api="blas"):
            t0 = time.perf_counter()
            for state in states:
                explainer.select(state, options)
            return (time.perf_counter() - t0) / len(states)

    print(f"{len(states)} queries of the {args.demo} demo, reconstruct k={args.k}, torch threads={args.threads}")
    print(f"{'machine':<26}{'BLAS ' + str(default) + ' (default)':>20}{'BLAS 1':>12}{'ratio':>8}")
    for label, busy in (("idle", False), ("beside a busy process", True)):
        proc = None
        if busy:
            code = BUSY.format(threads=args.threads, seconds=3600)
            proc = subprocess.Popen([sys.executable, "-c", code])
            time.sleep(2.0)
        try:
            for _ in range(args.repeats):
                many, one = seconds_per_query(default), seconds_per_query(1)
                print(f"{label:<26}{many:>18.3f} s{one:>10.3f} s{many / one:>7.1f}x")
        finally:
            if proc is not None:
                proc.kill()
                proc.wait()


if __name__ == "__main__":
    main()
