"""Loading local Hugging Face models (optionally with a PEFT LoRA adapter) and their checksums.

Only local directories are read (no hub access); weights load from safetensors only.
A GGUF checkpoint can be converted once to a float32 safetensors directory with
`convert_gguf`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from exemplar.errors import InvalidInputError

WEIGHT_SUFFIXES = (".safetensors", ".json", ".model", ".txt", ".jinja")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""Weight precisions a model can be loaded in; projections and sums are float32 whatever the weights."""
DEVICES = "auto | cpu | cuda | cuda:N"


def resolve_device(device: str) -> str:
    """`auto` -> `cuda` when torch sees a GPU, else `cpu`; `cpu`, `cuda`, `cuda:N` are checked."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return device
    if re.fullmatch(r"cuda(:\d+)?", device):
        if not torch.cuda.is_available():
            raise InvalidInputError(f"device {device!r}: this torch sees no CUDA GPU; use --device cpu (or auto)")
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise InvalidInputError(f"device {device!r}: only {torch.cuda.device_count()} CUDA GPU(s) here")
        return device
    raise InvalidInputError(f"unknown device {device!r}; choose {DEVICES}")


def check_dtype(dtype: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise InvalidInputError(f"unknown dtype {dtype!r}; choose {' | '.join(DTYPES)}")
    return DTYPES[dtype]


@dataclass
class LoadedModel:
    """A model ready for featurisation, its tokenizer and where it came from."""

    model: torch.nn.Module
    tokenizer: Any
    task: str
    model_dir: Path
    adapter_dir: Path | None
    checksum: str
    dtype: str = "float32"
    device: str = "cpu"

    @property
    def label2id(self) -> dict[str, int] | None:
        if self.task != "classification":
            return None
        config: Any = self.model.config
        return {str(k): int(v) for k, v in config.label2id.items()}


def directory_checksum(*dirs: Path | None) -> str:
    """sha256 over the names and bytes of the weight, config and tokenizer files."""
    h = hashlib.sha256()
    for d in dirs:
        if d is None:
            continue
        for path in sorted(p for p in d.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)):
            h.update(path.name.encode())
            with path.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 22), b""):
                    h.update(chunk)
    return h.hexdigest()


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise InvalidInputError(f"{what} {str(path)!r} is not a directory; pass a local Hugging Face model directory")
    return path.resolve()


AUTO_CLASSES = {"classification": "AutoModelForSequenceClassification", "causal-lm": "AutoModelForCausalLM"}


def _require_safetensors(directory: Path | None, what: str, task: str) -> None:
    """Refuse pickled PyTorch weights (`*.bin`, `*.pt`) with how to convert them: only safetensors load."""
    if directory is None or any(directory.glob("*.safetensors")):
        return
    pickled = sorted(p.name for p in directory.iterdir() if p.suffix in (".bin", ".pt", ".pth"))
    if not pickled:
        return
    if what == "model":
        auto = AUTO_CLASSES.get(task, "AutoModel")
        how = (
            f'convert it once: python -c "import sys, transformers as t; '
            f"t.{auto}.from_pretrained(sys.argv[1]).save_pretrained(sys.argv[2]); "
            f't.AutoTokenizer.from_pretrained(sys.argv[1]).save_pretrained(sys.argv[2])" {directory} NEW_DIR'
        )
    else:
        how = "re-save the adapter with PeftModel.save_pretrained(NEW_DIR), which writes safetensors"
    raise InvalidInputError(
        f"{str(directory)!r} holds {', '.join(pickled)} (pickled PyTorch weights) and no .safetensors; only "
        f"safetensors are loaded (reading a pickle can run code): {how}"
    )


def load_model(
    model_dir: str | Path,
    task: str,
    adapter_dir: str | Path | None = None,
    *,
    dtype: str = "float32",
    device: str = "cpu",
    base_model: str | Path | None = None,
) -> LoadedModel:
    """Load `model_dir` for `task` ("classification" | "causal-lm"), its weights in `dtype`, onto
    `device` (`resolve_device`).

    A LoRA adapter is taken from `adapter_dir`, or from `model_dir` itself when it holds an
    `adapter_config.json`; its base model is then `base_model` or, without it, the local
    directory its config names (a Hub id there is refused: nothing is downloaded).
    """
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    weights_dtype, device = check_dtype(dtype), resolve_device(device)
    base = _require_dir(Path(model_dir), "model")
    adapter = _require_dir(Path(adapter_dir), "adapter") if adapter_dir is not None else None
    if base_model is not None and (adapter is not None or not (base / "adapter_config.json").exists()):
        raise InvalidInputError("--base-model goes with --model ADAPTER_DIR (a directory with adapter_config.json)")
    if adapter is None and (base / "adapter_config.json").exists():
        adapter = base
        base_name = json.loads((base / "adapter_config.json").read_text()).get("base_model_name_or_path")
        if base_model is not None:
            base_name = str(_require_dir(Path(base_model), "base model"))
        if not base_name:
            raise InvalidInputError(
                f"adapter {str(base)!r} does not name its base model; pass --model BASE_DIR --lora {base}"
            )
        if not Path(base_name).is_dir():
            raise InvalidInputError(
                f"adapter {str(base)!r} names its base model {base_name!r}, which is not a local directory (a Hub "
                f"id?); nothing is downloaded: get the base model's directory and pass --base-model BASE_DIR (or "
                f"--model BASE_DIR --lora {base})"
            )
        base = Path(base_name).resolve()
    if not (base / "config.json").exists():
        raise InvalidInputError(f"{str(base)!r} has no config.json: not a Hugging Face model directory")
    _require_safetensors(base, "model", task)
    _require_safetensors(adapter, "adapter", task)
    if task == "classification":
        auto: Any = AutoModelForSequenceClassification
    elif task == "causal-lm":
        auto = AutoModelForCausalLM
    else:
        raise InvalidInputError(f"unknown task {task!r}; choose classification or causal-lm")
    try:
        model = auto.from_pretrained(base, use_safetensors=True, local_files_only=True, dtype=weights_dtype)
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"cannot load a {task} model from {str(base)!r}: {exc}") from exc
    tokenizer = AutoTokenizer.from_pretrained(adapter or base, local_files_only=True)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter, is_trainable=False)
    model.to(device)
    model.eval()
    return LoadedModel(model, tokenizer, task, base, adapter, directory_checksum(base, adapter), dtype, device)


def convert_gguf(gguf_file: Path, out_dir: Path) -> Path:
    """Dequantise a GGUF causal LM to a float32 safetensors directory (once; 10-15 s).

    `save_pretrained` refuses GGUF-loaded models, so the state dict is written directly.
    """
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if (out_dir / "config.json").exists():
        return out_dir
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save_pretrained(tmp)
    os.replace(tmp, out_dir)
    return out_dir
