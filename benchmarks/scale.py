"""Explain latency, server memory and index cost as the index grows: 2k, 117k real examples, 1M.

All three indexes hold the large demo's vectors (`index-builder demo large`: MiniLM fine-tuned
on WordNet supersenses, 117,000 real glosses, 608 dims), so only N changes:

- 2k: the demo's first 2,000 rows, written as their own index (`index_type="auto"` -> flat).
- 117k: the demo's index itself (auto -> HNSW32 in 8 norm buckets, and a directions index).
- 1M (`--million`): the demo's rows replicated to 1,000,000 with independent Gaussian noise
  of 1 % of each row's norm (`NOISE`), examples copied under ids `<id>~<copy>`: real queries
  against a store of a million rows shaped like real gradients, not a million real examples.

For each N a real `exemplar-api` serves the index (default settings: full-space scores,
`balanced` preset); every strategy explains the same held-out queries (the demo's test split,
k = 10) one at a time after two warm-up requests, and the script records client-side p50/p99,
the server's memory (/proc/<pid>/status after those requests: in all, anonymous, mapped files), the index's
build time and size. On approximate indexes `reconstruct` is also run with the "exact"
preset (its pool from a scan of every row) and the median dB gap to the indexed pool is
printed: the quality target is 0.3 dB.

    .venv/bin/python benchmarks/scale.py --quick                      # 2k and 117k, a few minutes
    .venv/bin/python benchmarks/scale.py --queries 30 --million --out docs/results/scale/scale.json

The last line is `scale: n=<largest N> p50_ms_balanced=<..> p50_ms_reconstruct=<..>
ratio_vs_2k_reconstruct=<..> rss_mb=<..>`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import re
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from app.process import running_api
from exemplar.index import write_index
from exemplar.models import load_model
from exemplar.research.demos import prepare
from exemplar.search import factory_string, norm_buckets_for, resolve_index_type
from exemplar.store import FaissGradientStore, dataset_checksum, read_manifest
from exemplar.strategies import STRATEGIES
from exemplar.tasks import Example, make_task

NOISE = 0.01
"""Replicated rows: Gaussian noise of this fraction of the row's norm (spread over its dims)."""
K = 10
WARMUP = 2
REPLICATE_CHUNK = 100_000


def derived_index(source: Path, n: int, out: Path) -> float:
    """Write an index of `n` rows from the demo index at `source` (its first rows, or its rows
    replicated with noise when `n` is larger); returns the seconds `write_index` took."""
    store = FaissGradientStore(source)
    m = store.manifest
    n0, d = store.n, m.dims
    base_examples = store.all_examples()
    loaded = load_model(m.model_dir, m.task)
    task = make_task(m.task, loaded.tokenizer, label2id=loaded.label2id, max_length=m.max_length)
    base_tokens = [task.lexical_ids(e) for e in base_examples[: min(n, n0)]]
    rng = np.random.default_rng(0)
    vectors = np.empty((n, d), dtype=np.float32)
    examples: list[Example] = []
    tokens: list[list[int]] = []
    for start in range(0, n, REPLICATE_CHUNK):
        rows = np.arange(start, min(n, start + REPLICATE_CHUNK))
        base = np.asarray(store.vectors[rows % n0], dtype=np.float32)
        copy = rows // n0
        scale = NOISE * np.asarray(store.norms[rows % n0], dtype=np.float32)[:, None] / np.sqrt(d)
        noise = rng.standard_normal(base.shape, dtype=np.float32) * scale
        vectors[rows] = np.where((copy == 0)[:, None], base, base + noise)
    for i in range(n):
        e = base_examples[i % n0]
        examples.append(e if i < n0 else dataclasses.replace(e, id=f"{e.id}~{i // n0}"))
        tokens.append(base_tokens[i % n0])
    buckets = norm_buckets_for(n, 1)
    index_type = resolve_index_type("auto", n, d)
    manifest = dataclasses.replace(
        m,
        n_examples=n,
        dataset_checksum=dataset_checksum(examples),
        index_type=factory_string(index_type, n // buckets, d),
        shards=1,
        norm_buckets=buckets if index_type != "flat" else 1,
        checkpoints=[],
        created_at=time.time(),
    )
    store.close()
    started = time.perf_counter()
    write_index(out, manifest, vectors, examples, token_ids=tokens, overwrite=True)
    return time.perf_counter() - started


def size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def memory_mb(url: str) -> dict[str, float]:
    """The server's resident memory (MiB): in all, anonymous (its own), and mapped files (the
    memory-mapped vectors and index files: page cache, shared and reclaimable)."""
    port = url.rsplit(":", 1)[1]
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
            status = (cmdline.parent / "status").read_text()
        except OSError:
            continue
        if any(a.endswith(b"exemplar-api") for a in args) and port.encode() in args:
            kb = {k: float(v) for k, v in re.findall(r"^(VmRSS|VmHWM|RssAnon|RssFile):\s+(\d+) kB", status, re.M)}
            return {
                "rss_mb": kb["VmRSS"] / 1024,
                "peak_rss_mb": kb["VmHWM"] / 1024,
                "anon_mb": kb["RssAnon"] / 1024,
                "file_mb": kb["RssFile"] / 1024,
            }
    raise RuntimeError(f"no exemplar-api process on port {port}")


def explain(http: httpx.Client, url: str, body: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    started = time.perf_counter()
    r = http.post(f"{url}/v1/explain", json=body)
    return (time.perf_counter() - started) * 1e3, (r.json() if r.status_code == 200 else None)


def fitting(texts: list[str], index: Path, n: int) -> list[str]:
    """The first `n` of `texts` that fit the index's max_length (longer ones get a 422)."""
    from transformers import AutoTokenizer

    m = read_manifest(index)
    tokenizer = AutoTokenizer.from_pretrained(m.model_dir, local_files_only=True)
    return [t for t in texts if len(tokenizer(t)["input_ids"]) <= m.max_length][:n]


def measure(index: Path, queries: list[str], members: list[str], log: Path) -> dict[str, Any]:
    """Every strategy over `queries` against a live server on `index` ("self" over `members`,
    training examples: it explains a training example by itself); p50/p99 ms of the answered
    requests, errors, memory."""
    approximate = read_manifest(index).index_type != "Flat"
    out: dict[str, Any] = {"strategies": {}}
    with running_api(index, log, timeout_s=900) as url, httpx.Client(timeout=600) as http:
        for strategy in STRATEGIES:
            texts = members if strategy == "self" else queries
            for q in texts[:WARMUP]:
                explain(http, url, {"text": q, "k": K, "strategy": strategy})
            ms, errors, dbs = [], 0, []
            for q in texts:
                t, body = explain(http, url, {"text": q, "k": K, "strategy": strategy})
                if body is not None:
                    ms.append(t)
                errors += body is None
                dbs.append(body["score_db"] if body else None)
            out["strategies"][strategy] = {
                "p50_ms": float(np.percentile(ms, 50)),
                "p99_ms": float(np.percentile(ms, 99)),
                "errors": errors,
                "score_db": dbs,
            }
            print(f"  {strategy:<12} p50 {out['strategies'][strategy]['p50_ms']:8.1f} ms  errors {errors}", flush=True)
        out.update(memory_mb(url))  # after every strategy's requests, before any full scan
        if approximate:
            gaps, exact_ms = [], []
            for q, db in zip(queries, out["strategies"]["reconstruct"]["score_db"], strict=True):
                t, body = explain(http, url, {"text": q, "k": K, "strategy": "reconstruct", "preset": "exact"})
                exact_ms.append(t)
                if body and db is not None and body["score_db"] is not None:
                    gaps.append(body["score_db"] - db)
            out["reconstruct_exact_p50_ms"] = float(np.percentile(exact_ms, 50))
            out["reconstruct_gap_db_median"] = float(statistics.median(gaps)) if gaps else None
            out["reconstruct_gap_db"] = gaps
            print(
                f"  reconstruct with the exact preset: p50 {out['reconstruct_exact_p50_ms']:.1f} ms, "
                f"median gap {out['reconstruct_gap_db_median']:+.3f} dB (exact - indexed)",
                flush=True,
            )
            out["after_exact_scans"] = memory_mb(url)  # the exact preset has read every vector
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(".cache/demos"))
    parser.add_argument("--work", type=Path, default=Path(".cache/scale"))
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--million", action="store_true", help="also replicate the demo to 1,000,000 rows")
    parser.add_argument("--quick", action="store_true", help="2k and 117k, 8 queries per strategy")
    parser.add_argument("--out", type=Path, help="write the records (JSON) here")
    args = parser.parse_args()
    n_queries = 8 if args.quick else args.queries
    started = time.perf_counter()
    demo = prepare("large", args.root)
    print(f"large demo ready at {demo} ({time.perf_counter() - started:.0f} s)", flush=True)
    test = [json.loads(line)["text"] for line in (demo.parent / "test.jsonl").read_text().splitlines()]
    train = [json.loads(line)["text"] for line in (demo.parent / "train.jsonl").read_text().splitlines()[:200]]
    queries, members = fitting(test, demo, n_queries), fitting(train, demo, n_queries)
    n0 = read_manifest(demo).n_examples
    sizes = [2000, n0] + ([1_000_000] if args.million and not args.quick else [])
    args.work.mkdir(parents=True, exist_ok=True)
    records = []
    for n in sizes:
        index, build_s = demo, None
        if n != n0:
            index = args.work / f"index-{n}"
            print(f"writing the {n:,}-row index ...", flush=True)
            build_s = derived_index(demo, n, index)
        m = read_manifest(index)
        print(f"n={n:,} {m.index_type} x{m.norm_buckets} ({size_mb(index):,.0f} MiB on disk)", flush=True)
        result = measure(index, queries, members, args.work / f"api-{n}.log")
        records.append(
            {
                "n": n,
                "dims": m.dims,
                "index_type": m.index_type,
                "norm_buckets": m.norm_buckets,
                "vectors_mb": n * m.dims * 4 / 2**20,
                "index_mb": size_mb(index),
                "write_index_s": build_s,
                **result,
            }
        )
        if index != demo:
            shutil.rmtree(index)
    base = records[0]["strategies"]
    print(f"\n{'N':>10} {'index':<10} {'strategy':<12} {'p50 ms':>9} {'p99 ms':>9} {'x 2k':>6} {'RSS MiB':>8}")
    for rec in records:
        for s, v in rec["strategies"].items():
            ratio = v["p50_ms"] / base[s]["p50_ms"]
            print(
                f"{rec['n']:>10,} {rec['index_type']:<10} {s:<12} {v['p50_ms']:9.1f} {v['p99_ms']:9.1f} "
                f"{ratio:6.2f} {rec['rss_mb']:8.0f}"
            )
    print(
        f"\n{'N':>10} {'vectors MiB':>12} {'index MiB':>10} {'written s':>10} {'RSS MiB':>8} {'anon':>6} "
        f"{'files':>6} {'target':>7}  (target: 1.2 x (RSS at 2k + the vectors added))"
    )
    for rec in records:
        rec["rss_target_mb"] = 1.2 * (records[0]["rss_mb"] + rec["vectors_mb"] - records[0]["vectors_mb"])
        written = "-" if rec["write_index_s"] is None else f"{rec['write_index_s']:.0f}"
        print(
            f"{rec['n']:>10,} {rec['vectors_mb']:12.0f} {rec['index_mb']:10.0f} {written:>10} {rec['rss_mb']:8.0f} "
            f"{rec['anon_mb']:6.0f} {rec['file_mb']:6.0f} {rec['rss_target_mb']:7.0f}"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps(
                {
                    "command": " ".join(["python", *sys.argv]),
                    "machine": f"{platform.node()} {platform.machine()}, {len(__import__('os').sched_getaffinity(0))} cores",
                    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                    "k": K,
                    "records": records,
                },
                indent=1,
            )
        )
    last = records[-1]
    print(
        f"scale: n={last['n']} p50_ms_balanced={last['strategies']['balanced']['p50_ms']:.1f} "
        f"p50_ms_reconstruct={last['strategies']['reconstruct']['p50_ms']:.1f} "
        f"ratio_vs_2k_reconstruct={last['strategies']['reconstruct']['p50_ms'] / base['reconstruct']['p50_ms']:.2f} "
        f"rss_mb={last['rss_mb']:.0f}"
    )


if __name__ == "__main__":
    main()
