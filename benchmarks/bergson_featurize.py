"""EleutherAI Bergson's projected per-example gradients, timed like `featurize.py`'s modes.

Runs in its own virtual environment (`make bergson`, `.venv-bergson/`), never imports
`exemplar`, and is started by `benchmarks/featurize.py` (mode "bergson"):

    .venv-bergson/bin/python benchmarks/bergson_featurize.py --model-dir M [--adapter-dir A] \
        --task causal-lm --data rows.jsonl --n 48 --threads 2 --proj-dim 64 --max-length 160

Bergson's in-memory collection path: an `InMemoryCollector` (forward/backward hooks that
form each example's two-sided random projection `L @ G @ R.T` of every tracked module,
`p x p` per module) driven by a `CollectorComputer` (padded batches from a `datasets.Dataset`
of token ids, forward, per-example losses, one backward). `--proj-dim` is the number of
dims per module as in our featuriser, so Bergson's `projection_dim` is its square root
(64 -> 8 x 8). The model is set up as Bergson's `setup_model_and_peft` does it: every
parameter frozen except the input embeddings, so that the hooks see gradients.

Tracked modules: the LoRA A/B matrices of the adapter (`extract_peft_target_modules`) or,
without an adapter, every `nn.Linear` whose input is `[batch, seq, features]`: Bergson's
hooks assert 3-d inputs, so a classifier's pooler and head (inputs `[batch, features]`)
cannot be tracked and are left out (they are listed on stderr).

Losses match `exemplar.tasks`: classification is the cross-entropy of the label (the
collector's forward/backward is replaced, as Bergson's Hessian code does, since Bergson's
own loss is next-token cross-entropy); causal LM is Bergson's own next-token loss with
`loss_reduction="mean"` over the response tokens, the prompt rendered with the chat
template as `CausalLMTask` does. A warm-up on 4 examples precedes the timed n; the timed
part includes tokenisation, as `featurize()` does. The last stdout line is one JSON object
with the keys of `featurize.py`'s `run_mode`.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")

import argparse
import json
import logging
import math
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
MAX_BATCH_SIZE = 16  # our featuriser's batch_size and max_batch_tokens
MAX_BATCH_TOKENS = 4096


def load(
    model_dir: str, task: str, adapter_dir: str | None, device: str = "cpu", dtype: str = "float32"
) -> tuple[Any, Any]:
    """The model and tokenizer, as `exemplar.models.load_model` loads them (local only), in `dtype`
    on `device`."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    auto: Any = AutoModelForSequenceClassification if task == "classification" else AutoModelForCausalLM
    weights = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    model = auto.from_pretrained(model_dir, use_safetensors=True, local_files_only=True, dtype=weights)
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir or model_dir, local_files_only=True)
    if adapter_dir:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir, autocast_adapter_dtype=False)
    model.to(device)
    model.eval()
    # as bergson.utils.worker_utils.setup_model_and_peft: the hooks only need activations
    # that require grad, so only the input embeddings do
    model.requires_grad_(False)
    model.get_input_embeddings().requires_grad_(True)
    return model, tokenizer


def encode(task: str, tokenizer: Any, label2id: dict[str, int], row: dict[str, Any], max_length: int) -> dict:
    """Token ids and loss targets of one row, as `exemplar.tasks` encodes it."""
    if task == "classification":
        ids = list(tokenizer(row["text"], add_special_tokens=True)["input_ids"])
        if len(ids) > max_length:  # keep the closing special token
            ids = ids[: max_length - 1] + ids[-1:]
        return {"input_ids": ids, "label_id": label2id[row["label"]], "length": len(ids)}

    def ids_of(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    prompt, response = row["prompt"], row["response"]
    prompt_ids: list[int] | None = None
    if getattr(tokenizer, "chat_template", None):
        user = [{"role": "user", "content": prompt}]
        prompt_text = tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
        full_text = tokenizer.apply_chat_template([*user, {"role": "assistant", "content": response}], tokenize=False)
        p_ids, full_ids = ids_of(prompt_text), ids_of(full_text)
        if full_ids[: len(p_ids)] == p_ids and len(full_ids) > len(p_ids):
            prompt_ids, response_ids = p_ids, full_ids[len(p_ids) :]
    if prompt_ids is None:
        bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        prompt_ids, response_ids = bos + ids_of(prompt), ids_of(" " + response) + eos
    if len(prompt_ids) + len(response_ids) > max_length:  # keep the response, drop the prompt's start
        response_ids = response_ids[: max_length - 1]
        prompt_ids = prompt_ids[len(prompt_ids) - (max_length - len(response_ids)) :]
    ids = prompt_ids + response_ids
    return {"input_ids": ids, "labels": [IGNORE_INDEX] * len(prompt_ids) + response_ids, "length": len(ids)}


def classification_fwd_bwd(model: Any, x: torch.Tensor, y: torch.Tensor, batch: dict) -> torch.Tensor:
    """`CollectorComputer.forward_backward` for a sequence classifier: label cross-entropy.

    Bergson pads with 0 and passes no attention mask (harmless for a causal LM, not for an
    encoder), so the mask is rebuilt from the row lengths.
    """
    lengths = torch.tensor([len(ids) for ids in batch["input_ids"]], device=x.device)
    mask = (torch.arange(x.shape[1], device=x.device).unsqueeze(0) < lengths.unsqueeze(1)).long()
    logits = model(input_ids=x, attention_mask=mask).logits
    losses = F.cross_entropy(logits.float(), torch.tensor(batch["label_id"], device=x.device), reduction="none")
    losses.sum().backward()
    model.zero_grad()
    return losses.detach()


def tracked_modules(model: Any, adapter: bool, probe: dict) -> tuple[Any, set[str]]:
    """The module Bergson's collector hooks into and the names of the modules it tracks."""
    from bergson.utils.worker_utils import extract_peft_target_modules

    if adapter:  # as bergson.collect_gradients: the collector sees model.base_model
        return model.base_model, extract_peft_target_modules(model)
    # every nn.Linear with a [batch, seq, features] input, found by one forward pass
    ndim: dict[str, int] = {}

    def record(name: str) -> Any:
        def hook(module: torch.nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            ndim[name] = args[0].ndim

        return hook

    handles = [m.register_forward_hook(record(n)) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    try:
        with torch.no_grad():
            ids = torch.tensor([probe["input_ids"]], device=next(model.parameters()).device)
            model(input_ids=ids, attention_mask=torch.ones_like(ids))
    finally:
        for h in handles:
            h.remove()
    skipped = sorted(n for n, d in ndim.items() if d != 3)
    if skipped:
        print(f"bergson: not tracked (input is not [batch, seq, features]): {', '.join(skipped)}", file=sys.stderr)
    return model, {n for n, d in ndim.items() if d == 3}


def collect(
    model: Any, hooked: Any, targets: set[str], processor: Any, cfg: Any, rows: list[dict], encode_row: Any
) -> torch.Tensor:
    """Bergson's in-memory collection of projected gradients for `rows`: `(n, dims)`."""
    from bergson import CollectorComputer, InMemoryCollector
    from bergson.data import allocate_batches
    from datasets import Dataset

    encoded = [encode_row(r) for r in rows]
    data = Dataset.from_list(encoded)
    collector = InMemoryCollector(model=hooked, cfg=cfg, processor=processor, target_modules=targets, data=data)
    computer = CollectorComputer(
        model=model,
        data=data,
        collector=collector,
        batches=allocate_batches(data["length"][:], MAX_BATCH_TOKENS, max_batch_size=MAX_BATCH_SIZE),
        cfg=cfg,
    )
    if "label_id" in data.column_names:
        computer.forward_backward = classification_fwd_bwd
    computer.run_with_collector_hooks(desc="bergson")
    return torch.cat([collector.gradients[name] for name in collector.shapes()], dim=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--adapter-dir")
    parser.add_argument("--task", choices=["classification", "causal-lm"], required=True)
    parser.add_argument("--data", required=True, help="JSONL: text,label or prompt,response")
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--proj-dim", type=int, default=64, help="dims per module, a perfect square")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (benchmarks/gpu_check.py)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args()
    side = math.isqrt(args.proj_dim)
    if side * side != args.proj_dim:
        parser.error("--proj-dim must be a perfect square (side x side per module)")
    torch.set_num_threads(args.threads)

    from bergson import IndexConfig
    from bergson.utils.worker_utils import processor_for

    logging.disable(logging.INFO)  # bergson logs every tracked module name to stdout at INFO
    rows = [json.loads(line) for line in Path(args.data).read_text().splitlines() if line.strip()][: args.n]
    if len(rows) < args.n:
        parser.error(f"{args.data} has only {len(rows)} rows")
    model, tokenizer = load(args.model_dir, args.task, args.adapter_dir, args.device, args.dtype)
    label2id = {str(k): int(v) for k, v in model.config.label2id.items()} if args.task == "classification" else {}

    def encode_row(r: dict) -> dict:
        return encode(args.task, tokenizer, label2id, r, args.max_length)

    hooked, targets = tracked_modules(model, bool(args.adapter_dir), encode_row(rows[0]))
    with tempfile.TemporaryDirectory() as tmp:
        # the computer writes total_processed.pt to cfg.partial_run_path
        cfg = IndexConfig(
            run_path=str(Path(tmp) / "run"),
            projection_dim=side,
            projection_type="normal",
            projection_seed=0,
            loss_fn="ce",
            loss_reduction="mean",
            token_batch_size=MAX_BATCH_TOKENS,
            max_batch_size=MAX_BATCH_SIZE,
        )
        cfg.partial_run_path.mkdir(parents=True)
        processor = processor_for(cfg)
        collect(model, hooked, targets, processor, cfg, rows[:4], encode_row)  # warm-up
        tokens = sum(len(encode_row(r)["input_ids"]) for r in rows)
        started = time.perf_counter()
        vectors = collect(model, hooked, targets, processor, cfg, rows, encode_row)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
    if not torch.isfinite(vectors).all() or not vectors.abs().sum(dim=1).gt(0).all():
        raise SystemExit("bergson: some gradient rows are zero or not finite")
    modules = dict(hooked.named_modules())
    print(
        json.dumps(
            {
                "examples_per_s": args.n / seconds,
                "tokens_per_s": tokens / seconds,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "params": float(sum(modules[n].weight.numel() for n in targets)),
                "dims": float(vectors.shape[1]),
            }
        )
    )


if __name__ == "__main__":
    main()
