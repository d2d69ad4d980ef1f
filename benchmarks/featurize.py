"""Featurisation throughput and memory, side by side in one run.

Modes, each in its own subprocess so that peak RSS is its own:
- plain: a batched forward + backward of the same model, batches and threads, with the same
  parameters requiring grad (the floor: no projection at all);
- ours: `KroneckerFeaturizer` (per-layer two-sided projection inside the backward pass);
- naive: per-example autograd gradients of the SAME parameters as ours, then TRAK's dense
  `BasicProjector` (PyPI `traker`) to the same number of dims. The dense matrix
  (params x dims) does not fit in memory, so BasicProjector generates it block by block at
  every `project` call; all naive examples are projected in one call to amortise that;
- naive-subset: the same route on a parameter subset small enough for a quick run (the
  `--quick` comparison; 2.7 % of MiniLM's tracked parameters, 2 of SmolLM2's 30 LoRA layers);
- bergson: EleutherAI Bergson's in-memory projected per-example gradient collection
  (`benchmarks/bergson_featurize.py`), in its own virtual environment `.venv-bergson`
  (`make bergson`); skipped when that is not installed.

    .venv/bin/python benchmarks/featurize.py --quick          # MiniLM only, < 2 minutes
    .venv/bin/python benchmarks/featurize.py --model tweets --model chat

The last line is `featurize: vs_plain=<ours/plain> vs_naive=<ours/naive> peak_rss_mb=<ours>`
(ratios of examples/s) for the first model (naive = naive-subset with --quick), with ` vs_bergson=<ours/bergson>` appended when
Bergson ran.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from exemplar.gradients import ProjectionConfig
from exemplar.index import build_featurizer
from exemplar.models import load_model
from exemplar.research.demos import prepare
from exemplar.store import read_manifest
from exemplar.tasks import Example

NAIVE_PARAMS = {  # a subset whose dense projection matrix block fits in memory
    "classification": r"regex:classifier|pooler|layer\.5\.attention\.output",
    "causal-lm": r"regex:layers\.(28|29)\..*lora_",
}


BERGSON_PYTHON = Path(__file__).resolve().parent.parent / ".venv-bergson" / "bin" / "python"


def _rows(index_dir: Path, n: int) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (index_dir.parent / "train.jsonl").read_text().splitlines()][:n]


def _examples(index_dir: Path, n: int) -> list[Example]:
    rows = _rows(index_dir, n)
    return [
        Example(text=r.get("text"), label=r.get("label"), prompt=r.get("prompt"), response=r.get("response"))
        for r in rows
    ]


def run_mode(mode: str, demo: str, n: int, threads: int) -> dict[str, float]:
    torch.set_num_threads(threads)
    index_dir = prepare(demo, Path(".cache/demos"))
    m = read_manifest(index_dir)
    loaded = load_model(m.model_dir, m.task, m.adapter_dir)
    params = NAIVE_PARAMS[m.task] if mode == "naive-subset" else m.params
    featurizer = build_featurizer(loaded, ProjectionConfig(params=params, proj_dim=m.proj_dim, seed=0), m.max_length)
    examples = _examples(index_dir, n)
    encoded = [featurizer.task.encode(e) for e in examples]
    tokens = sum(len(e.input_ids) for e in encoded)
    featurizer.featurize(examples[:4])  # warm-up
    started = time.perf_counter()
    if mode == "ours":
        featurizer.featurize(examples)
    elif mode == "plain":
        for group in featurizer.batches(encoded):
            batch = featurizer.task.collate([encoded[i] for i in group])
            with torch.enable_grad():
                loss = featurizer.task.per_example_loss(featurizer.model, batch).losses.sum()
                torch.autograd.grad(loss, [mod.weight for _, mod in featurizer.layers], allow_unused=True)
    else:
        from trak.projectors import BasicProjector, ProjectionType

        weights = [mod.weight for _, mod in featurizer.layers]
        grad_dim = sum(w.numel() for w in weights)
        block = max(1, min(100, int(2e9 / 4 / grad_dim)))  # a generated block of <= 2 GB
        projector = BasicProjector(grad_dim, m.dims, 0, ProjectionType.normal, torch.device("cpu"), block_size=block)
        chunk: list[torch.Tensor] = []
        for enc in encoded:
            batch = featurizer.task.collate([enc])
            with torch.enable_grad():
                loss = featurizer.task.per_example_loss(featurizer.model, batch).losses.sum()
                grads = torch.autograd.grad(loss, weights, allow_unused=True)
            chunk.append(
                torch.cat(
                    [
                        (g if g is not None else torch.zeros_like(w)).reshape(-1)
                        for g, w in zip(grads, weights, strict=True)
                    ]
                )
            )
        if chunk:
            projector.project(torch.stack(chunk), model_id=0)
    seconds = time.perf_counter() - started
    return {
        "examples_per_s": n / seconds,
        "tokens_per_s": tokens / seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "params": float(sum(mod.weight.numel() for _, mod in featurizer.layers)),
        "dims": float(featurizer.dims if mode in ("ours", "plain") else m.dims),
    }


def run_bergson(demo: str, n: int, threads: int) -> dict[str, float] | str:
    """Bergson on the first n training rows, in `.venv-bergson`; its result, or why it failed."""
    index_dir = prepare(demo, Path(".cache/demos"))
    m = read_manifest(index_dir)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "rows.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in _rows(index_dir, n)))
        command = [str(BERGSON_PYTHON), str(Path(__file__).with_name("bergson_featurize.py"))]
        command += ["--model-dir", str(m.model_dir), "--task", m.task, "--data", str(data), "--n", str(n)]
        command += ["--threads", str(threads), "--proj-dim", str(m.proj_dim), "--max-length", str(m.max_length)]
        if m.adapter_dir:
            command += ["--adapter-dir", str(m.adapter_dir)]
        out = subprocess.run(command, capture_output=True, text=True)
    if out.returncode != 0:
        tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
        return f"exit {out.returncode}: {tail}"
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _report(demo: str, mode: str, count: int, r: dict[str, float]) -> None:
    print(
        f"{demo:<7}{mode:<6} n={count:<4} {r['examples_per_s']:8.2f} ex/s {r['tokens_per_s']:9.0f} tok/s  peak RSS {r['peak_rss_mb']:7.0f} MB  "
        f"tracked params {r['params']:,.0f} -> {r['dims']:.0f} dims",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", choices=["tweets", "chat"], help="demo model(s) (default tweets)")
    parser.add_argument("--n", type=int, help="examples per mode (default 256 tweets / 48 chat; --quick: 128)")
    parser.add_argument("--naive-n", type=int, help="examples for the naive modes (default 16; --quick: 32)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="MiniLM only, small n: under 2 minutes")
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--demo", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:  # child process
        print(json.dumps(run_mode(args.mode, args.demo, args.n, args.threads)))
        return
    demos = ["tweets"] if args.quick else (args.model or ["tweets"])
    summary = None
    for demo in demos:
        n = args.n or (128 if args.quick else (256 if demo == "tweets" else 48))
        naive_n = args.naive_n or (32 if args.quick else 16)
        results = {}
        naive = "naive-subset" if args.quick else "naive"
        modes = ("plain", "ours", "naive-subset") if args.quick else ("plain", "ours", "naive", "naive-subset")
        for mode in modes:
            count = naive_n if mode.startswith("naive") else n
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--mode",
                    mode,
                    "--demo",
                    demo,
                    "--n",
                    str(count),
                    "--threads",
                    str(args.threads),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
            _report(demo, mode, count, results[mode])
        vs_bergson = None
        if not BERGSON_PYTHON.exists():
            print(f"{demo}: bergson not installed (make bergson)", flush=True)
        elif isinstance(bergson := run_bergson(demo, n, args.threads), str):
            print(f"{demo}: bergson failed ({bergson})", flush=True)
        else:
            _report(demo, "bergson", n, bergson)
            vs_bergson = results["ours"]["examples_per_s"] / bergson["examples_per_s"]
            print(f"{demo}: ours/bergson {vs_bergson:.2f}", flush=True)
        vs_plain = results["ours"]["examples_per_s"] / results["plain"]["examples_per_s"]
        vs_naive = results["ours"]["examples_per_s"] / results[naive]["examples_per_s"]
        ratios = ", ".join(
            f"ours/{mode} {results['ours']['examples_per_s'] / results[mode]['examples_per_s']:.1f}x "
            f"({results[mode]['params']:,.0f} params)"
            for mode in modes
            if mode.startswith("naive")
        )
        print(f"{demo}: ours/plain {vs_plain:.2f}, {ratios}")
        if summary is None:
            summary = (
                f"featurize: vs_plain={vs_plain:.2f} vs_naive={vs_naive:.1f} "
                f"peak_rss_mb={results['ours']['peak_rss_mb']:.0f}"
            )
            if vs_bergson is not None:
                summary += f" vs_bergson={vs_bergson:.2f}"
    print(summary)


if __name__ == "__main__":
    main()
