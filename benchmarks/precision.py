"""Weight precision: the projected vectors and featurisation speed in bfloat16 and float16 against
float32, side by side in one run on the same model and examples.

The model is the `tiny` demo's (MiniLM with a seeded classification head over tweets, prepared
under --root if missing; `linear` layers, 16 dims per layer). For each precision: the training
examples' vectors, the held-out queries' vectors, and the time to featurise them. Reported
against float32: the relative error of each vector (median, p99, max), the lowest cosine, how
many of each query's top-10 neighbours by inner product stay the same, and the examples/s ratio.

    .venv/bin/python benchmarks/precision.py [--n 300] [--queries 50] [--root .cache/demos]

Last line: `precision: bf16_rel_err_max= bf16_top10= bf16_speed= fp16_rel_err_max= fp16_top10= fp16_speed=`.
CPU only here; benchmarks/gpu_check.sh runs the GPU side where a GPU is lent.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from exemplar.gradients import ProjectionConfig
from exemplar.index import build_featurizer
from exemplar.models import load_model
from exemplar.research.demos import DEMOS, held_out_queries, prepare
from exemplar.store import read_manifest
from exemplar.tasks import Example


def featurize(
    model_dir: Path, dtype: str, examples: list[Example], config: ProjectionConfig
) -> tuple[np.ndarray, float]:
    loaded = load_model(model_dir, "classification", dtype=dtype)
    featurizer = build_featurizer(loaded, config, DEMOS["tiny"].max_length)
    featurizer.featurize(examples[:16])  # warm-up
    started = time.perf_counter()
    vectors = featurizer.featurize(examples).vectors
    return vectors, len(examples) / (time.perf_counter() - started)


def top10(train: np.ndarray, queries: np.ndarray) -> np.ndarray:
    return np.argsort(-(queries @ train.T), axis=1)[:, :10]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path(".cache/demos"))
    parser.add_argument("--n", type=int, default=300, help="training examples featurised per precision")
    parser.add_argument("--queries", type=int, default=50)
    args = parser.parse_args()
    index_dir = prepare("tiny", args.root)
    manifest = read_manifest(index_dir)
    lines = (index_dir.parent / "train.jsonl").read_text().splitlines()[: args.n]
    train = [Example(text=row["text"], label=row["label"]) for row in map(json.loads, lines)]
    queries = held_out_queries(index_dir, args.queries)
    config = ProjectionConfig(params=manifest.params, proj_dim=manifest.proj_dim, seed=manifest.seed)
    torch.set_num_threads(torch.get_num_threads())
    results: dict[str, dict[str, float]] = {}
    reference: tuple[np.ndarray, np.ndarray, float] | None = None
    print(f"model {manifest.model_dir}, {len(train)} training examples, {len(queries)} queries, {manifest.dims} dims")
    print("| weights | rel. error median | p99 | max | min cosine | top-10 kept | examples/s | speed vs float32 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for dtype in ("float32", "bfloat16", "float16"):
        vectors, speed = featurize(Path(manifest.model_dir), dtype, train, config)
        query_vectors, _ = featurize(Path(manifest.model_dir), dtype, queries, config)
        if reference is None:
            reference = (vectors, query_vectors, speed)
        ref_vectors, ref_queries, ref_speed = reference
        both = np.concatenate([vectors, query_vectors])
        ref = np.concatenate([ref_vectors, ref_queries])
        errors = np.linalg.norm(both - ref, axis=1) / np.linalg.norm(ref, axis=1)
        cosine = (both * ref).sum(1) / np.linalg.norm(both, axis=1) / np.linalg.norm(ref, axis=1)
        mine, theirs = top10(vectors, query_vectors), top10(ref_vectors, ref_queries)
        kept = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(mine, theirs, strict=True)]))
        results[dtype] = {"rel_err_max": float(errors.max()), "top10": kept, "speed": speed / ref_speed}
        print(
            f"| {dtype} | {np.median(errors):.4f} | {np.percentile(errors, 99):.4f} | {errors.max():.4f} "
            f"| {cosine.min():.6f} | {kept:.3f} | {speed:.1f} | {speed / ref_speed:.2f}x |"
        )
    bf, fp = results["bfloat16"], results["float16"]
    print(
        f"precision: bf16_rel_err_max={bf['rel_err_max']:.4f} bf16_top10={bf['top10']:.3f} bf16_speed={bf['speed']:.2f} "
        f"fp16_rel_err_max={fp['rel_err_max']:.4f} fp16_top10={fp['top10']:.3f} fp16_speed={fp['speed']:.2f}"
    )


if __name__ == "__main__":
    main()
