"""The GPU check (run by benchmarks/gpu_check.sh on a machine with a GPU; `--device cpu` runs the
same steps here, as a smoke test of the script itself).

1. Vectors: the suite's tiny classifier (all linear layers) and tiny causal LM (LoRA) featurised
   on `--device` in bfloat16 and float32, each against the CPU float32 vectors; the relative
   error must stay within tests/test_precision.py's tolerance (measured on the CPU).
2. An index built on `--device` in bfloat16 (`build_index`), opened and queried there
   (`Explainer.from_index(device=...)`), then served over HTTP in-process (`app.main.create_app`)
   when FastAPI is importable: /readyz and one /v1/explain.
3. Throughput: examples/s of our featuriser and of EleutherAI Bergson's
   (benchmarks/bergson_featurize.py, in a Python that has `bergson`: see `bergson_python`) on one
   MiniLM-shaped BERT (6 layers, 384 wide; random weights: no model files travel to the GPU
   machine), the same rows, device and precision, float32 and bfloat16, 64 dims per layer.

Models are made on the spot (tests/tiny_models.py): nothing is downloaded. The last line is
`gpu_check: device= bf16_rel_err_max= served= ours_float32_ex_s= bergson_float32_ex_s= ours_bfloat16_ex_s=
bergson_bfloat16_ex_s=` (a Bergson value is `not-installed` or `failed` when it did not run).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from exemplar.build import build_index  # noqa: E402
from exemplar.explain import Explainer  # noqa: E402
from exemplar.gradients import ProjectionConfig  # noqa: E402
from exemplar.index import build_featurizer  # noqa: E402
from exemplar.models import load_model, resolve_device  # noqa: E402
from exemplar.tasks import Example  # noqa: E402
from tests.test_precision import TOLERANCE  # noqa: E402
from tests.tiny_models import CORPUS, LABELS, save_causal_lm, save_classifier, tiny_tokenizer  # noqa: E402


def vectors(path: Path, task: str, params: str, examples: list[Example], dtype: str, device: str) -> np.ndarray:
    loaded = load_model(path, task, dtype=dtype, device=device)
    featurizer = build_featurizer(loaded, ProjectionConfig(params=params, proj_dim=16, seed=0), 64)
    return featurizer.featurize(examples).vectors


def check_vectors(tmp: Path, device: str) -> float:
    cases = [
        ("classifier", save_classifier(tmp / "clf"), "classification", "linear", [Example(text=t) for t in CORPUS]),
        (
            "causal LM + LoRA",
            save_causal_lm(tmp / "lm", lora=True),
            "causal-lm",
            "lora",
            [Example(prompt=t, response=CORPUS[(i + 1) % len(CORPUS)]) for i, t in enumerate(CORPUS)],
        ),
    ]
    worst = 0.0
    for name, path, task, params, examples in cases:
        reference = vectors(path, task, params, examples, "float32", "cpu")
        for dtype in ("float32", "bfloat16"):
            got = vectors(path, task, params, examples, dtype, device)
            error = float((np.linalg.norm(got - reference, axis=1) / np.linalg.norm(reference, axis=1)).max())
            limit = TOLERANCE["bfloat16"] if dtype == "bfloat16" else 1e-3
            verdict = "ok" if error <= limit else "OVER"
            print(
                f"vectors {name} {dtype} on {device} vs float32 on cpu: max rel. error {error:.5f} (<= {limit}) {verdict}"
            )
            if error > limit:
                raise SystemExit(f"gpu_check: {name} {dtype} vectors on {device} are off by {error:.4f}")
            if dtype == "bfloat16":
                worst = max(worst, error)
    return worst


def check_index(tmp: Path, device: str) -> str:
    model = save_classifier(tmp / "clf-index")
    loaded = load_model(model, "classification", dtype="bfloat16", device=device)
    rows = [Example(id=f"ex{i}", text=t, label=LABELS[i % 3]) for i, t in enumerate(CORPUS * 3)]
    out = tmp / "index"
    build_index(loaded, rows, out, ProjectionConfig(params="linear", proj_dim=16, seed=0), max_length=32)
    explainer = Explainer.from_index(out, device=device)
    explanation = explainer.explain(Example(text="stocks fell"), k=3)
    print(f"index built and queried on {device} in bfloat16: {explanation.score_db:.2f} dB, k=3")
    if importlib.util.find_spec("fastapi") is None:
        print("served: skipped (fastapi is not installed here)")
        return "skipped"
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.settings import ApiSettings

    with TestClient(create_app(ApiSettings(index_dir=out, device=device, watch_interval_s=0))) as client:
        ready = client.get("/readyz").status_code
        answer = client.post("/v1/explain", json={"text": "stocks fell", "k": 3}).status_code
    print(f"served on {device}: /readyz {ready}, /v1/explain {answer}")
    return "ok" if (ready, answer) == (200, 200) else "failed"


def bergson_python() -> str | None:
    """A Python with `bergson` importable: $EXEMPLAR_BERGSON_PYTHON, .venv-bergson (`make bergson`),
    or this machine's python3 (the GPU image, with the wheels `gpu_check.sh --prepare` carried)."""
    candidates = [os.environ.get("EXEMPLAR_BERGSON_PYTHON"), str(ROOT / ".venv-bergson" / "bin" / "python"), "python3"]
    for python in filter(None, candidates):
        found = subprocess.run([python, "-c", "import bergson"], capture_output=True, check=False)
        if found.returncode == 0:
            return python
    return None


def bergson_speed(python: str, model_dir: Path, rows: Path, n: int, device: str, dtype: str) -> float | str:
    """Bergson's examples/s on the same model, rows and device (benchmarks/bergson_featurize.py)."""
    command = [python, str(ROOT / "benchmarks" / "bergson_featurize.py"), "--model-dir", str(model_dir)]
    command += ["--task", "classification", "--data", str(rows), "--n", str(n), "--proj-dim", "64"]
    command += ["--max-length", "64", "--device", device, "--dtype", dtype, "--threads", str(torch.get_num_threads())]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return "failed: " + (done.stderr.strip().splitlines() or ["?"])[-1][:200]
    return float(json.loads(done.stdout.strip().splitlines()[-1])["examples_per_s"])


def throughput(device: str, n: int, tmp: Path) -> dict[str, float | str]:
    """Examples/s of ours and Bergson's, float32 and bfloat16, on one MiniLM-shaped BERT."""
    from transformers import BertConfig, BertForSequenceClassification

    tokenizer = tiny_tokenizer()
    config = BertConfig(
        vocab_size=max(tokenizer.vocab_size, 512),
        hidden_size=384,
        num_hidden_layers=6,
        num_attention_heads=12,
        intermediate_size=1536,
        num_labels=3,
        id2label=dict(enumerate(LABELS)),
        label2id={k: i for i, k in enumerate(LABELS)},
    )
    torch.manual_seed(0)
    model_dir = tmp / "minilm-shaped"
    BertForSequenceClassification(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    texts = [" ".join(CORPUS[(i + j) % len(CORPUS)] for j in range(4)) for i in range(n)]
    rows = tmp / "rows.jsonl"
    rows.write_text("".join(json.dumps({"text": t, "label": LABELS[i % 3]}) + "\n" for i, t in enumerate(texts)))
    examples = [Example(text=t, label=LABELS[i % 3]) for i, t in enumerate(texts)]
    python = bergson_python()
    speeds: dict[str, float | str] = {}
    for dtype in ("float32", "bfloat16"):
        loaded = load_model(model_dir, "classification", dtype=dtype, device=device)
        featurizer = build_featurizer(loaded, ProjectionConfig(params="linear", proj_dim=64, seed=0), 64, batch_size=16)
        featurizer.featurize(examples[:32])
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        started = time.perf_counter()
        featurizer.featurize(examples)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        speeds[f"ours_{dtype}"] = n / (time.perf_counter() - started)
        speeds[f"bergson_{dtype}"] = (
            bergson_speed(python, model_dir, rows, n, device, dtype) if python else "not-installed"
        )
        theirs = speeds[f"bergson_{dtype}"]
        ratio = f" ({speeds[f'ours_{dtype}'] / theirs:.2f}x Bergson)" if isinstance(theirs, float) else ""
        print(
            f"MiniLM-shaped BERT, {dtype} on {device}, {n} examples: ours {speeds[f'ours_{dtype}']:.1f} examples/s"
            f"{ratio}; Bergson {theirs if isinstance(theirs, str) else f'{theirs:.1f} examples/s'}"
        )
    return speeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--n", type=int, default=2048, help="examples timed for throughput")
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 means float32 in the vector check
    print(
        f"torch {torch.__version__}, device {device}"
        + (f" ({torch.cuda.get_device_name()})" if device != "cpu" else "")
    )
    with tempfile.TemporaryDirectory() as tmp:
        worst = check_vectors(Path(tmp), device)
        served = check_index(Path(tmp), device)
        speeds = throughput(device, args.n, Path(tmp))

    def show(value: float | str) -> str:
        return f"{value:.1f}" if isinstance(value, float) else value.split(":")[0]

    print(
        f"gpu_check: device={device} bf16_rel_err_max={worst:.5f} served={served} "
        + " ".join(f"{name}_ex_s={show(value)}" for name, value in speeds.items())
    )


if __name__ == "__main__":
    main()
