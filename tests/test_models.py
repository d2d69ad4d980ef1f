"""Loading local models: pickled weights are refused with a conversion that works, Hub bases are named."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from exemplar.errors import InvalidInputError
from exemplar.models import directory_checksum, load_model
from tests.tiny_models import save_causal_lm, save_classifier


def test_pickled_weights_are_refused_with_a_conversion_that_works(tmp_path: Path) -> None:
    model_dir = save_classifier(tmp_path / "clf")
    original = load_model(model_dir, "classification")
    weights = model_dir / "model.safetensors"
    torch.save(original.model.state_dict(), model_dir / "pytorch_model.bin")
    weights.unlink()
    with pytest.raises(InvalidInputError, match=r"pytorch_model\.bin .*only safetensors") as refused:
        load_model(model_dir, "classification")
    command = re.search(r'convert it once: (python -c ".*" \S+) NEW_DIR', str(refused.value))
    assert command is not None, str(refused.value)
    argv = [sys.executable if a == "python" else a for a in shlex.split(command.group(1))]
    subprocess.run([*argv, str(tmp_path / "converted")], check=True, capture_output=True)
    converted = load_model(tmp_path / "converted", "classification")
    for name, tensor in original.model.state_dict().items():
        assert torch.equal(converted.model.state_dict()[name], tensor), name


def test_a_pickled_adapter_is_refused(tmp_path: Path) -> None:
    adapter = save_causal_lm(tmp_path / "lm", lora=True)
    (safetensors,) = adapter.glob("adapter_model.safetensors")
    safetensors.rename(adapter / "adapter_model.bin")
    with pytest.raises(InvalidInputError, match=r"PeftModel\.save_pretrained"):
        load_model(adapter, "causal-lm")


def test_an_adapter_naming_a_hub_base_says_what_to_pass(tmp_path: Path) -> None:
    adapter = save_causal_lm(tmp_path / "lm", lora=True)
    config = json.loads((adapter / "adapter_config.json").read_text())
    base = Path(config["base_model_name_or_path"])
    config["base_model_name_or_path"] = "HuggingFaceTB/SmolLM2-135M-Instruct"
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(InvalidInputError, match=r"not a local directory \(a Hub id\?\).*--base-model BASE_DIR"):
        load_model(adapter, "causal-lm")
    loaded = load_model(adapter, "causal-lm", base_model=base)  # what the message says to pass
    assert loaded.checksum == directory_checksum(base, adapter)
    assert load_model(base, "causal-lm", adapter).checksum == loaded.checksum  # or the other way it names
    with pytest.raises(InvalidInputError, match="--base-model goes with --model ADAPTER_DIR"):
        load_model(base, "causal-lm", base_model=base)
