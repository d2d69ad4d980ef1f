"""Load test of the real server over HTTP on 127.0.0.1: requests/s and latency percentiles.

Starts its own `exemplar-api` for each setting (micro-batching off: EXEMPLAR_BATCH_MAX=1;
on: the default) and drives `POST /v1/explain` from C concurrent clients for a fixed time,
with held-out queries of the demo (no cache: every request computes).

    .venv/bin/python benchmarks/load.py                 # tweets demo, C = 1, 4, 16, 20 s each
    .venv/bin/python benchmarks/load.py --quick         # tiny demo, C = 1 and 16, < 2 minutes
    .venv/bin/python benchmarks/load.py --ci            # CI: api + worker + Redis, 30 s at C = 16
                                                        # plus a batch job; exit 1 on any failure

The last line is `load: rps_c1=<x> rps_c16=<y> p99_ms=<z> errors=<n>` (C = 1 without
batching, C = 16 with it, p99 at C = 16 with it, errors over every run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from app.process import BIN, ENV, running_api
from exemplar.research.demos import prepare

# Held-out tweets can be longer than the demos' 64-token max_length: cut them, as a client
# that accepts truncation would ask (the default refuses them with 422).
SERVER_ENV = {"EXEMPLAR_TRUNCATE_QUERIES": "true"}
CLIENT_TIMEOUT_S = 300  # an answer slower than this counts as an error


def queries(index: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (index.parent / "test.jsonl").read_text().splitlines()]
    return [{"text": r["text"]} if "text" in r else {"prompt": r["prompt"], "response": r["response"]} for r in rows]


async def drive(url: str, bodies: list[dict[str, Any]], concurrency: int, seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    stop = time.monotonic() + seconds

    async def client(i: int) -> None:
        nonlocal errors
        n = i
        # a request waits behind up to C - 1 others on the model thread: with full-space scores (every
        # request runs its selected examples too) that reached 58 s at C = 16 beside the worker's job
        async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT_S) as http:
            while time.monotonic() < stop:
                # the seed is part of the cache key: ~500 distinct requests, then repeats (cache hits with Redis)
                body = {**bodies[n % len(bodies)], "k": 5, "seed": n % 500}
                n += concurrency
                started = time.perf_counter()
                try:
                    r = await http.post(f"{url}/v1/explain", json=body)
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                latencies.append(time.perf_counter() - started)
                errors += not ok

    started = time.monotonic()
    await asyncio.gather(*(client(i) for i in range(concurrency)))
    elapsed = time.monotonic() - started
    ms = np.asarray(latencies) * 1e3
    return {
        "rps": len(latencies) / elapsed,
        "p50": float(np.percentile(ms, 50)),
        "p95": float(np.percentile(ms, 95)),
        "p99": float(np.percentile(ms, 99)),
        "n": float(len(latencies)),
        "errors": float(errors),
    }


def benchmark(index: Path, levels: list[int], seconds: float, workdir: Path) -> None:
    bodies = queries(index)
    results: dict[tuple[str, int], dict[str, float]] = {}
    for batching, env in (("off", {**SERVER_ENV, "EXEMPLAR_BATCH_MAX": "1"}), ("on", SERVER_ENV)):
        with running_api(index, workdir / f"api-batching-{batching}.log", **env) as url:
            asyncio.run(drive(url, bodies, 2, 2.0))  # warm-up
            for c in levels:
                r = results[(batching, c)] = asyncio.run(drive(url, bodies, c, seconds))
                print(
                    f"batching {batching:<3} C={c:<3} {r['rps']:7.1f} req/s  p50 {r['p50']:7.1f} ms  "
                    f"p95 {r['p95']:7.1f} ms  p99 {r['p99']:7.1f} ms  n={r['n']:.0f} errors={r['errors']:.0f}",
                    flush=True,
                )
    top = max(levels)
    c1, c16 = results[("off", 1)], results[("on", top)]
    print(
        f"C={top} with batching / C=1 without: {c16['rps'] / c1['rps']:.2f}x requests/s; "
        f"C={top} without batching / C=1: {results[('off', top)]['rps'] / c1['rps']:.2f}x"
    )
    errors = sum(r["errors"] for r in results.values())
    print(f"load: rps_c1={c1['rps']:.1f} rps_c16={c16['rps']:.1f} p99_ms={c16['p99']:.0f} errors={errors:.0f}")


def ci(index: Path, seconds: float, workdir: Path, redis_url: str) -> int:
    """Bounded load with Redis, a real worker and a batch job; non-zero exit on any failure."""
    queue = f"loadtest-{uuid.uuid4().hex}"
    # api and worker share the machine's cores: one torch thread each, so neither spins on the other's
    env = {**SERVER_ENV, "EXEMPLAR_REDIS_URL": redis_url, "EXEMPLAR_QUEUE": queue, "EXEMPLAR_TORCH_THREADS": "1"}
    with (workdir / "worker.log").open("w") as log:
        worker = subprocess.Popen(
            [BIN / "exemplar-worker", "--redis", redis_url, "--queue", queue, "--index", str(index)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**ENV, "OMP_NUM_THREADS": "1"},
        )
    failures = []
    try:
        with running_api(index, workdir / "api.log", **env) as url:
            bodies = queries(index)
            job = httpx.post(f"{url}/v1/jobs", json={"queries": bodies[:50], "options": {"k": 3}}, timeout=30)
            if job.status_code != 202:
                failures.append(f"job submit: {job.status_code} {job.text}")
            r = asyncio.run(drive(url, bodies, 16, seconds))
            print(
                f"C=16 for {seconds:.0f} s: {r['rps']:.1f} req/s, p50 {r['p50']:.0f} ms, p99 {r['p99']:.0f} ms, "
                f"{r['n']:.0f} requests, {r['errors']:.0f} errors"
            )
            if r["errors"]:
                failures.append(f"{r['errors']:.0f} failed requests")
            if job.status_code == 202:
                deadline = time.monotonic() + 300
                status: dict[str, Any] = {}
                while time.monotonic() < deadline:
                    status = httpx.get(f"{url}/v1/jobs/{job.json()['id']}", timeout=30).json()
                    if status.get("status", "error") in ("finished", "failed", "canceled", "stopped", "error"):
                        break
                    time.sleep(0.5)
                results = status.get("results") or []
                if status.get("status") != "finished" or len(results) != 50 or any("error" in x for x in results):
                    failures.append(f"batch job lost or failed: {status.get('status')}, {len(results)} results")
                else:
                    print("batch job: 50 queries explained")
            metrics = httpx.get(f"{url}/metrics", timeout=10).text
            server_errors = [
                line
                for line in metrics.splitlines()
                if line.startswith("exemplar_requests_total") and 'status="5' in line
            ]
            if server_errors:
                failures.append(f"5xx responses: {server_errors}")
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    for failure in failures:
        print(f"loadtest FAILED: {failure}", file=sys.stderr)
    print(f"loadtest: {'ok' if not failures else 'FAILED'}")
    return 1 if failures else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=Path, help="index to serve (default: the tweets demo; --quick/--ci: tiny)")
    parser.add_argument("--root", type=Path, default=Path(".cache/demos"))
    parser.add_argument("--seconds", type=float, help="seconds per setting (default 20; --quick 8; --ci 30)")
    parser.add_argument("--quick", action="store_true", help="tiny demo, C = 1 and 16: under 2 minutes")
    parser.add_argument("--ci", action="store_true", help="api + worker + Redis, bounded load and a batch job")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/12", help="Redis for --ci")
    args = parser.parse_args()
    index = args.index or prepare("tiny" if args.quick or args.ci else "tweets", args.root)
    workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"exemplar-load-{os.getpid()}"
    workdir.mkdir(parents=True, exist_ok=True)
    if args.ci:
        sys.exit(ci(index, args.seconds or 30.0, workdir, args.redis))
    levels = [1, 16] if args.quick else [1, 4, 16]
    benchmark(index, levels, args.seconds or (8.0 if args.quick else 20.0), workdir)


if __name__ == "__main__":
    main()
