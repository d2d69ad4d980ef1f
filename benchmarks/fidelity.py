"""Does the served score hold in the model's own space? Projected vs full-space scores, influence recall, latency.

Per held-out query of a demo, every strategy's selection at each k (retrieved and selected in
the projection, as served) is scored on the index's projected vectors and on the examples'
exact full gradients w.r.t. the tracked weights (`exemplar.fullspace`), with both solvers.
For `reconstruct` and `auto` two selections are recorded: the candidate the projection
would pick (what was served before the full-space choice) and the one the full space picks
(served now); the difference in their projected-minus-full gaps is the inflation the
full-space choice removes. Then: the latency of full-space scoring beside one batched
forward+backward of the k selected examples and beside the whole request, and (`--recall`)
how much of the true full-space top-k influence projected retrieval finds at several
proj_dim, with and without an exact re-ranking of its candidate pool.

    .venv/bin/python benchmarks/fidelity.py --demo tweets --queries 40 --recall \\
        --out docs/results/fidelity-tweets.json.gz
    .venv/bin/python benchmarks/fidelity.py --quick   # tweets, 8 queries, k = 1 and 10
    .venv/bin/python benchmarks/fidelity.py --demo chat --queries 20 --recall-only  # recall alone

The last line is `fidelity: median_abs_db= reconstruct_gap_db= exact_score_ms= n=` (median
|projected - full| dB over the paper's strategies, `reconstruct`'s median projected-minus-full
gap as served, the median full-space scoring time at k = 10, and the number of selections).
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr

from exemplar.explain import Explainer, QueryState
from exemplar.fullspace import FullGram, KroneckerGram
from exemplar.gradients import KroneckerFeaturizer, ProjectionConfig
from exemplar.options import ExplainOptions
from exemplar.relevance import mean_of_ratios_db, selection_relevance
from exemplar.research.demos import held_out_queries, prepare
from exemplar.research.evaluation import training_examples
from exemplar.strategies import retrieve
from exemplar.tasks import Example

STRATEGIES = ("topk", "balanced", "random", "divine", "aide", "reconstruct", "auto")
PAPER_STRATEGIES = ("topk", "balanced", "random", "divine", "aide")
SOLVERS = ("paper", "exact")
LATENCY_K = 10
RECALL_K = 10
RERANK_POOL = 100


def score_query(
    explainer: Explainer, state: QueryState, query_id: int, ks: Sequence[int], strategies: Sequence[str]
) -> list[dict[str, Any]]:
    """One record per (strategy, k, solver): the served selection and the projection's own choice."""
    grams: dict[tuple[int, ...], FullGram] = {}
    records = []
    for strategy in strategies:
        for k in ks:
            for solver in SOLVERS:
                options = ExplainOptions(k=k, strategy=strategy, solver=solver, score_space="full")
                proposals = explainer.proposals(state, options)
                scored = []
                for p in proposals:
                    key = tuple(sorted(int(r) for r in p.rows))
                    if key not in grams:
                        grams[key] = explainer.full_gram(state, np.asarray(key))
                    full = grams[key].relevance(solver)
                    projected = selection_relevance(state.grad, explainer.store.vectors_at(np.asarray(key)), solver)
                    scored.append((p.strategy, full, projected))
                served = max(range(len(scored)), key=lambda i: scored[i][1].db)  # the full space picks
                by_projection = max(range(len(scored)), key=lambda i: scored[i][2].db)  # the projection would pick
                records.append(
                    {
                        "query": query_id,
                        "strategy": strategy,
                        "k": k,
                        "solver": solver,
                        "n_candidates": len(scored),
                        "winner": scored[served][0],
                        "full_db": scored[served][1].db,
                        "full_ratio": scored[served][1].ratio,
                        "projected_db": scored[served][2].db,
                        "n_weighted": int(np.sum(scored[served][1].weights > 1e-6)),
                        "by_projection_full_db": scored[by_projection][1].db,
                        "by_projection_projected_db": scored[by_projection][2].db,
                    }
                )
    return records


def latency(explainer: Explainer, queries: Sequence[Example]) -> list[dict[str, Any]]:
    """At k = LATENCY_K (balanced, paper solver): full-space scoring vs the k examples' forward+backward,
    the request with and without it, and float32 products against float64."""
    out = []
    f32 = KroneckerGram(
        explainer.featurizer.model,
        explainer.featurizer.task,
        explainer.featurizer.layers,
        batches=explainer.featurizer.batches,
        dtype=torch.float32,
    )
    for query in queries:
        projected = explainer.explain(query, k=LATENCY_K, strategy="balanced", score_space="projected")
        full = explainer.explain(query, k=LATENCY_K, strategy="balanced", score_space="full")
        state = explainer.prepare(query, keep_factors=True)
        rows = np.array([s.example.row for s in full.examples])
        examples = training_examples(explainer, rows.tolist())
        t0 = time.perf_counter()
        explainer.full.factors(examples)  # one batched forward+backward of the k examples (and nothing else)
        t1 = time.perf_counter()
        gram = explainer.full_gram(state, rows)
        t2 = time.perf_counter()
        gram32 = f32.gram(examples, prefix=state.factors)
        out.append(
            {
                "fwd_bwd_ms": (t1 - t0) * 1e3,
                "full_score_ms": (t2 - t1) * 1e3,
                "explain_projected_ms": projected.timings_ms["total"],
                "explain_full_ms": full.timings_ms["total"],
                "float32_abs_db": {s: abs(gram32.relevance(s).db - gram.relevance(s).db) for s in SOLVERS},
            }
        )
    return out


def recall(
    explainer: Explainer, queries: Sequence[Example], proj_dims: Sequence[int], rerank_queries: int = 5
) -> dict[str, Any]:
    """Recall of the full-space top-RECALL_K influence (Grad-Dot, largest |I|) by projected retrieval.

    One forward/backward of the training set, chunk by chunk: each chunk's layer factors give
    its exact inner products with the queries' gradients and its projected vectors at every
    proj_dim (`KroneckerFeaturizer.project`), then are dropped."""
    featurizer = explainer.featurizer
    f32 = KroneckerGram(
        featurizer.model, featurizer.task, featurizer.layers, batches=featurizer.batches, dtype=torch.float32
    )
    manifest = explainer.store.manifest
    projectors = {
        proj_dim: KroneckerFeaturizer(
            featurizer.model,
            featurizer.task,
            ProjectionConfig(params=manifest.params, proj_dim=proj_dim, seed=manifest.seed),
            batch_size=featurizer.batch_size,
        )
        for proj_dim in proj_dims
    }
    train = training_examples(explainer, range(explainer.store.n))
    started = time.perf_counter()
    query_factors = f32.factors(queries)
    truth = np.zeros((len(queries), len(train)))  # exact Grad-Dot influence
    vectors = {p: np.zeros((len(train), f.dims)) for p, f in projectors.items()}
    for rows, chunk in f32.stream(train):
        for p, projector in projectors.items():
            vectors[p][rows] = projector.project(chunk)
        truth[:, rows] = -f32.cross_factors(query_factors, chunk)
    scan_s = time.perf_counter() - started
    true_top = np.argsort(-np.abs(truth), axis=1, kind="stable")[:, :RECALL_K]
    result: dict[str, Any] = {"scan_s": scan_s, "n_train": len(train), "by_proj_dim": {}}
    for proj_dim, projector in projectors.items():
        q = projector.project(query_factors).astype(np.float64)
        approx = -(q @ vectors[proj_dim].T)  # (q, n)
        order = np.argsort(-np.abs(approx), axis=1, kind="stable")
        got = order[:, :RECALL_K]
        pool = order[:, :RERANK_POOL]
        reranked = np.take_along_axis(pool, np.argsort(-np.abs(np.take_along_axis(truth, pool, 1)), axis=1), 1)
        reranked = reranked[:, :RECALL_K]

        def overlap(a: np.ndarray) -> float:
            return float(np.mean([len(set(x) & set(y)) / RECALL_K for x, y in zip(a, true_top, strict=True)]))

        result["by_proj_dim"][proj_dim] = {
            "dims": int(vectors[proj_dim].shape[1]),
            f"recall@{RECALL_K}": overlap(got),
            f"recall@{RECALL_K}_reranked_{RERANK_POOL}": overlap(reranked),
            "top1_agrees": float(np.mean(got[:, 0] == true_top[:, 0])),
            "top1_agrees_reranked": float(np.mean(reranked[:, 0] == true_top[:, 0])),
            "spearman_influence": float(
                np.median([spearmanr(a, t).statistic for a, t in zip(approx, truth, strict=True)])
            ),
        }
    # the re-ranking stage as the service runs it (`rerank: "full"`), beside its pool's forward+backward alone
    timings = []
    for query in queries[:rerank_queries]:
        state = explainer.prepare(query, keep_factors=True)
        grad_dot = explainer.estimators.get("grad_dot")
        pool_rows, _ = retrieve(explainer.store, grad_dot, state.query, "most_influential", RERANK_POOL)
        pool_examples = training_examples(explainer, pool_rows.tolist())
        t0 = time.perf_counter()
        explainer.full.factors(pool_examples)
        t1 = time.perf_counter()
        explainer.rerank(state, pool_rows, "most_influential")
        t2 = time.perf_counter()
        timings.append({"fwd_bwd_ms": (t1 - t0) * 1e3, "rerank_ms": (t2 - t1) * 1e3})
    result["rerank_latency"] = {key: statistics.median(t[key] for t in timings) for key in ("fwd_bwd_ms", "rerank_ms")}
    result["rerank_latency"]["queries"] = len(timings)
    return result


def summarise(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, int, str], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[r["strategy"], r["k"], r["solver"]].append(r)
    rows = []
    for (strategy, k, solver), rs in groups.items():
        proj = np.array([r["projected_db"] for r in rs])
        full = np.array([r["full_db"] for r in rs])
        before = np.array([r["by_projection_projected_db"] - r["by_projection_full_db"] for r in rs])
        rows.append(
            {
                "strategy": strategy,
                "k": k,
                "solver": solver,
                "n": len(rs),
                "projected_db": float(np.median(proj)),
                "full_db": float(np.median(full)),
                "full_mean_of_ratios_db": mean_of_ratios_db([r["full_ratio"] for r in rs]),
                "median_abs_delta_db": float(np.median(np.abs(proj - full))),
                "median_delta_db": float(np.median(proj - full)),
                "median_delta_db_projection_choice": float(np.median(before)),
                "spearman": float(spearmanr(proj, full).statistic) if len(rs) > 2 else float("nan"),
                "sign_agreement": float(np.mean(np.sign(proj) == np.sign(full))),
                "median_n_weighted": float(np.median([r["n_weighted"] for r in rs])),
            }
        )
    return rows


def print_tables(summary: list[dict[str, Any]], lat: list[dict[str, Any]], rec: dict[str, Any] | None) -> None:
    print(
        "| strategy | k | solver | projected dB | full dB | full dB (mean of ratios) | median abs(proj - full) "
        "| median (proj - full) | same, projection's own choice | Spearman | sign agreement | weighted |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for s in sorted(summary, key=lambda s: (s["solver"], STRATEGIES.index(s["strategy"]), s["k"])):
        print(
            f"| {s['strategy']} | {s['k']} | {s['solver']} | {s['projected_db']:+.2f} | {s['full_db']:+.2f} "
            f"| {s['full_mean_of_ratios_db']:+.2f} | {s['median_abs_delta_db']:.2f} | {s['median_delta_db']:+.2f} "
            f"| {s['median_delta_db_projection_choice']:+.2f} | {s['spearman']:.2f} | {s['sign_agreement']:.2f} "
            f"| {s['median_n_weighted']:.0f} |"
        )
    if lat:
        med = {key: statistics.median(x[key] for x in lat) for key in lat[0] if key != "float32_abs_db"}
        ratio = statistics.median(x["full_score_ms"] / x["fwd_bwd_ms"] for x in lat)
        print(
            f"\nlatency at k = {LATENCY_K} (balanced, paper solver, {len(lat)} queries, medians): forward+backward "
            f"of the k examples {med['fwd_bwd_ms']:.0f} ms; full-space scoring {med['full_score_ms']:.0f} ms "
            f"({ratio:.2f}x); /v1/explain p50 {med['explain_projected_ms']:.0f} ms projected, "
            f"{med['explain_full_ms']:.0f} ms full"
        )
        for solver in SOLVERS:
            worst = max(x["float32_abs_db"][solver] for x in lat)
            print(f"float32 products instead of float64, {solver} solver: largest |change| {worst:.2e} dB")
    if rec:
        print(
            f"\nrecall of the full-space top-{RECALL_K} influence ({rec['n_train']} training examples, exact scan {rec['scan_s']:.0f} s)"
        )
        print(
            f"| proj_dim | dims | recall@{RECALL_K} | re-ranked pool of {RERANK_POOL} | top-1 same | top-1 same, re-ranked | Spearman |"
        )
        print("|---|---|---|---|---|---|---|")
        for proj_dim, r in rec["by_proj_dim"].items():
            print(
                f"| {proj_dim} | {r['dims']} | {r[f'recall@{RECALL_K}']:.2f} | {r[f'recall@{RECALL_K}_reranked_{RERANK_POOL}']:.2f} "
                f"| {r['top1_agrees']:.2f} | {r['top1_agrees_reranked']:.2f} | {r['spearman_influence']:.2f} |"
            )
        lat_r = rec["rerank_latency"]
        print(
            f"re-ranking {RERANK_POOL} candidates as served (Explainer.rerank): {lat_r['rerank_ms']:.0f} ms, of which "
            f"their forward+backward alone takes {lat_r['fwd_bwd_ms']:.0f} ms (medians of {lat_r.get('queries', 5)} queries)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", default="tweets")
    parser.add_argument("--root", type=Path, default=Path(".cache/demos"))
    parser.add_argument("--queries", type=int, default=40)
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 5, 10, 25])
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--recall", action="store_true", help="also the influence recall by proj_dim (slow)")
    parser.add_argument("--proj-dims", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--out", type=Path, help="write the records (JSON, gzip when the name ends in .gz)")
    parser.add_argument("--quick", action="store_true", help="tweets, 8 queries, k = 1 and 10, no recall")
    parser.add_argument("--rerank-queries", type=int, default=5, help="queries the re-ranking latency is timed on")
    parser.add_argument(
        "--recall-only", action="store_true", help="only the influence recall by proj_dim (no scores, no latency)"
    )
    args = parser.parse_args()
    if args.quick:
        args.queries, args.ks = 8, [1, LATENCY_K]
        args.strategies = ["topk", "balanced", "random", "reconstruct"]
    torch.set_num_threads(args.threads)
    index_dir = prepare(args.demo, args.root)
    explainer = Explainer.from_index(index_dir)
    queries = held_out_queries(index_dir, args.queries)
    print(
        f"{args.demo}: {explainer.store.n} examples, {explainer.full.dims:,} tracked weights, "
        f"{explainer.store.manifest.dims} projected dims, {len(queries)} queries, threads={args.threads}"
    )
    started = time.perf_counter()
    records: list[dict[str, Any]] = []
    for i, query in enumerate([] if args.recall_only else queries):
        state = explainer.prepare(query, keep_factors=True)
        records += score_query(explainer, state, i, args.ks, args.strategies)
        print(f"  query {i + 1}/{len(queries)} scored ({time.perf_counter() - started:.0f} s)", flush=True)
    lat = [] if args.recall_only else latency(explainer, queries)
    rec = recall(explainer, queries, args.proj_dims, args.rerank_queries) if args.recall or args.recall_only else None
    summary = summarise(records)
    print_tables(summary, lat, rec)
    if args.out:
        payload = {
            "command": " ".join([".venv/bin/python benchmarks/fidelity.py", *sys.argv[1:]]),
            "demo": args.demo,
            "records": records,
            "summary": summary,
            "latency": lat,
            "recall": rec,
        }
        text = json.dumps(payload, indent=1, default=float)
        if args.out.suffix == ".gz":
            with gzip.open(args.out, "wt", encoding="utf-8") as fh:
                fh.write(text)
        else:
            args.out.write_text(text, encoding="utf-8")
    paper = [r for r in records if r["strategy"] in PAPER_STRATEGIES]
    ours = [r for r in records if r["strategy"] == "reconstruct"]
    median_abs = float(np.median([abs(r["projected_db"] - r["full_db"]) for r in paper])) if paper else float("nan")
    gap = float(np.median([r["projected_db"] - r["full_db"] for r in ours])) if ours else float("nan")
    score_ms = statistics.median(x["full_score_ms"] for x in lat) if lat else float("nan")
    print(
        f"fidelity: median_abs_db={median_abs:.3f} reconstruct_gap_db={gap:.3f} exact_score_ms={score_ms:.1f} "
        f"n={len(records)}"
    )


if __name__ == "__main__":
    main()
