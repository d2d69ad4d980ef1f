"""Building an index: featurise a training set (read with `exemplar.jsonl`) in resumable,
checksummed shards, locally or on workers (`ShardRunner`), and write the store."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from exemplar.errors import IndexIncompatibleError, InvalidInputError
from exemplar.gradients import KroneckerFeaturizer, ProjectionConfig
from exemplar.index import build_featurizer, open_index, write_index
from exemplar.jsonl import read_examples_jsonl, write_jsonl
from exemplar.models import LoadedModel
from exemplar.progress import Progress, SilentProgress
from exemplar.search import factory_string, norm_buckets_for, resolve_index_type, shard_bounds
from exemplar.store import Checkpoint, Manifest, checkpoint_file, dataset_checksum
from exemplar.tasks import Example


def build_index(
    loaded: LoadedModel,
    examples: list[Example],
    out_dir: str | Path,
    config: ProjectionConfig,
    *,
    max_length: int,
    batch_size: int = 16,
    chunk_size: int = 256,
    overwrite: bool = False,
    checkpoints: Sequence[tuple[LoadedModel, float]] = (),
    progress: Progress | None = None,
    resumed: list[int] | None = None,
    vector_dtype: str = "float32",
    runner: ShardRunner | None = None,
    index_type: str = "auto",
    search_shards: int = 1,
) -> Manifest:
    """Featurise `examples` with the query-time featuriser and publish the index at `out_dir`.

    `checkpoints` (model, learning rate) add TracIn: the same examples featurised under each
    earlier checkpoint with the same projection.

    Work is saved in shards of `chunk_size` examples (`.<out>.shards/` beside the index, each
    written to a temporary file, renamed, and checked by its sha256). Running the same build
    again after a crash reuses every finished shard; the index itself is published only when
    complete, and the shards are removed then. If `resumed` is given, the number of reused
    shards is appended to it.

    `runner` hands the missing shards to other processes first (`worker.distributed.RQShardRunner`):
    it gets the shard directory, a JSON job spec and the shard tasks, and returns once they
    are saved; whatever it left missing is then computed here.

    `index_type` ("auto": flat or hnsw by the vectors' size, `exemplar.search.resolve_index_type`;
    a name in `exemplar.search.INDEX_TYPES`; or a FAISS factory string) and
    `search_shards` choose the search index, checked before any gradient is computed.
    """
    if not examples:
        raise InvalidInputError("the training set is empty: nothing to index")
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise InvalidInputError(f"{str(out)!r} already exists; choose another --out or pass --overwrite")
    if chunk_size < 1:
        raise InvalidInputError(f"shard size must be >= 1; got {chunk_size}")
    progress = progress or SilentProgress()
    featurizer = build_featurizer(loaded, config, max_length, batch_size=batch_size)
    shard_bounds(len(examples), search_shards)
    buckets = norm_buckets_for(len(examples), search_shards)
    index_type = resolve_index_type(index_type, len(examples), featurizer.dims)
    index_spec = factory_string(index_type, len(examples) // (search_shards * buckets), featurizer.dims)
    dataset = dataset_checksum(examples)
    plan = {
        "dataset": dataset,
        "models": [loaded.checksum, *(c.checksum for c, _ in checkpoints)],
        "projection": [config.params, config.proj_dim, config.seed],
        "max_length": max_length,
        "shard_size": chunk_size,
    }
    shards = ShardDir.open(out.parent / f".{out.name}.shards", plan)
    if runner is not None:
        spec, tasks = _shard_jobs(
            shards, loaded, examples, dataset, config, max_length, batch_size, chunk_size, checkpoints
        )
        runner(shards, spec, [t for t in tasks if not shards.has(t.name)])
    vectors = _featurize_all(featurizer, examples, chunk_size, progress, "gradients", shards, "final")
    checkpoint_vectors = []
    for i, (ckpt, lr) in enumerate(checkpoints):
        if not lr > 0:
            raise InvalidInputError(f"checkpoint learning rates must be > 0; got {lr}")
        if ckpt.checksum == loaded.checksum:  # the final model itself: its vectors are already there
            checkpoint_vectors.append(vectors)
            continue
        ckpt_featurizer = build_featurizer(ckpt, config, max_length, batch_size=batch_size)
        if ckpt_featurizer.layer_names != featurizer.layer_names or ckpt.task != loaded.task:
            raise InvalidInputError(f"checkpoint {ckpt.model_dir} does not have the same tracked layers as the model")
        checkpoint_vectors.append(
            _featurize_all(ckpt_featurizer, examples, chunk_size, progress, f"checkpoint {i + 1}", shards, f"ckpt{i}")
        )
    label2id = loaded.label2id
    manifest = Manifest(
        task=loaded.task,
        model_dir=str(loaded.model_dir),
        adapter_dir=str(loaded.adapter_dir) if loaded.adapter_dir else None,
        model_checksum=loaded.checksum,
        params=config.params,
        layer_names=featurizer.layer_names,
        proj_dim=config.proj_dim,
        seed=config.seed,
        dims=featurizer.dims,
        n_examples=len(examples),
        dataset_checksum=dataset,
        max_length=max_length,
        labels=sorted(label2id, key=label2id.__getitem__) if label2id else None,
        checkpoints=[
            Checkpoint(str(c.model_dir), str(c.adapter_dir) if c.adapter_dir else None, c.checksum, float(lr))
            for c, lr in checkpoints
        ],
        vector_dtype=vector_dtype,
        model_dtype=loaded.dtype,
        device=loaded.device,
        index_type=index_spec,
        shards=search_shards,
        norm_buckets=buckets,
    )
    token_ids = [featurizer.task.lexical_ids(e) for e in examples]
    write_index(
        out_dir,
        manifest,
        vectors,
        examples,
        token_ids=token_ids,
        checkpoint_vectors=checkpoint_vectors,
        overwrite=overwrite,
        progress=progress,
    )
    shards.remove()
    if resumed is not None:
        resumed.append(shards.resumed)
    return manifest


@dataclass(frozen=True)
class ShardTask:
    """One shard of a build: rows ``[start, start + count)`` featurised under one model, saved as ``name``."""

    name: str
    start: int
    count: int
    model_dir: str
    adapter_dir: str | None
    model_checksum: str


ShardRunner = Callable[["ShardDir", dict[str, Any], list[ShardTask]], None]
"""Computes shard tasks elsewhere (``build_index(runner=...)``): (shards, job spec, tasks) -> None."""

EXAMPLES_FILE = "examples.jsonl"


def _shard_jobs(
    shards: ShardDir,
    loaded: LoadedModel,
    examples: list[Example],
    dataset: str,
    config: ProjectionConfig,
    max_length: int,
    batch_size: int,
    chunk_size: int,
    checkpoints: Sequence[tuple[LoadedModel, float]],
) -> tuple[dict[str, Any], list[ShardTask]]:
    """The JSON job spec other processes need (examples are written into the shard dir) and every shard task."""
    examples_path = shards.path / EXAMPLES_FILE
    if not examples_path.exists():
        write_jsonl(examples_path, examples)
    spec = {
        "shards_dir": str(shards.path.resolve()),
        "plan": shards.plan_checksum(),
        "examples": str(examples_path.resolve()),
        "dataset": dataset,
        "task": loaded.task,
        "projection": [config.params, config.proj_dim, config.seed],
        "max_length": max_length,
        "batch_size": batch_size,
        "dtype": loaded.dtype,  # workers compute in the builder's precision, on their own device
    }
    models = [(loaded, "final")] + [
        (ckpt, f"ckpt{i}") for i, (ckpt, _) in enumerate(checkpoints) if ckpt.checksum != loaded.checksum
    ]
    tasks = [
        ShardTask(
            f"{prefix}-{number:06d}",
            start,
            min(chunk_size, len(examples) - start),
            str(model.model_dir),
            str(model.adapter_dir) if model.adapter_dir else None,
            model.checksum,
        )
        for model, prefix in models
        for number, start in enumerate(range(0, len(examples), chunk_size))
    ]
    return spec, tasks


_worker_cache: dict[tuple[str, ...], Any] = {}


def run_shard(spec: Mapping[str, Any], task: ShardTask) -> bool:
    """Compute and save one shard of a distributed build (what a worker runs); False if it was already there.

    The worker must see the same model (checksum), examples (dataset checksum) and shard
    plan as the builder, through a shared directory; anything else is refused. The model
    and examples are cached per process.
    """
    from exemplar.models import load_model

    shards = ShardDir(Path(spec["shards_dir"]))
    if shards.plan_checksum() != spec["plan"]:
        raise IndexIncompatibleError(f"the shard directory {shards.path} now belongs to another build")
    if shards.has(task.name):
        return False
    key = ("model", task.model_dir, task.adapter_dir or "", spec["task"])
    if key not in _worker_cache:
        dtype = spec.get("dtype", "float32")
        _worker_cache[key] = load_model(task.model_dir, spec["task"], task.adapter_dir, dtype=dtype, device="auto")
    loaded = _worker_cache[key]
    if loaded.checksum != task.model_checksum:
        raise IndexIncompatibleError(
            f"this worker sees a different model at {task.model_dir} than the builder (checksum mismatch)"
        )
    data_key = ("examples", spec["examples"], spec["dataset"])
    if data_key not in _worker_cache:
        examples, errors = read_examples_jsonl(spec["examples"], spec["task"])
        if errors or dataset_checksum(examples) != spec["dataset"]:
            raise IndexIncompatibleError(f"{spec['examples']} is not the builder's training set")
        _worker_cache[data_key] = examples
    params, proj_dim, seed = spec["projection"]
    config = ProjectionConfig(params=params, proj_dim=proj_dim, seed=seed)
    featurizer = build_featurizer(loaded, config, spec["max_length"], batch_size=spec["batch_size"])
    chunk = _worker_cache[data_key][task.start : task.start + task.count]
    shards.save(task.name, featurizer.featurize(chunk).vectors)
    return True


class ShardDir:
    """Finished shards of an interrupted build, valid only for the same plan (data, models, projection)."""

    PLAN = "plan.json"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.resumed = 0

    @classmethod
    def open(cls, path: Path, plan: Mapping[str, object]) -> ShardDir:
        text = json.dumps(plan, sort_keys=True)
        plan_file = path / cls.PLAN
        if path.exists() and (not plan_file.exists() or plan_file.read_text() != text):
            shutil.rmtree(path)  # shards of another build: useless here
        path.mkdir(parents=True, exist_ok=True)
        if not plan_file.exists():
            _atomic_write(plan_file, text.encode())
        return cls(path)

    def plan_checksum(self) -> str:
        """sha256 of the plan this directory's shards belong to."""
        return hashlib.sha256((self.path / self.PLAN).read_bytes()).hexdigest()

    def has(self, name: str) -> bool:
        """A shard of this name was saved (its checksum file is written last)."""
        return (self.path / f"{name}.sha256").exists()

    def load(self, name: str, rows: int, dims: int) -> np.ndarray | None:
        data, digest = self.path / f"{name}.npy", self.path / f"{name}.sha256"
        if not (data.exists() and digest.exists()):
            return None
        raw = data.read_bytes()
        if hashlib.sha256(raw).hexdigest() != digest.read_text().strip():
            return None
        array = np.load(data)
        if array.shape != (rows, dims) or array.dtype != np.float32:
            return None
        self.resumed += 1
        return array

    def save(self, name: str, array: np.ndarray) -> None:
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(array, dtype=np.float32))
        raw = buffer.getvalue()
        _atomic_write(self.path / f"{name}.npy", raw)
        _atomic_write(self.path / f"{name}.sha256", hashlib.sha256(raw).hexdigest().encode())

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")  # unique across processes and machines
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def append_index(
    index_dir: str | Path,
    new_examples: list[Example],
    *,
    batch_size: int = 16,
    chunk_size: int = 256,
    progress: Progress | None = None,
) -> Manifest:
    """Add examples to an existing index under its manifest (same model, projection, parameters).

    The model (and any TracIn checkpoints) named by the manifest must be unchanged; ids must be
    new. Only the new examples are featurised; the norms, DataInf matrices, BM25 and FAISS
    index are rebuilt over all rows, and the new version replaces the old one in one rename.
    """
    from exemplar.models import load_model

    if not new_examples:
        raise InvalidInputError("no new examples to append")
    store, featurizer = open_index(index_dir, batch_size=batch_size)
    m = store.manifest
    config = ProjectionConfig(params=m.params, proj_dim=m.proj_dim, seed=m.seed)
    old = store.all_examples()
    taken = {e.id for e in old}
    clashes = [e.id for e in new_examples if e.id in taken]
    if clashes:
        raise InvalidInputError(
            f"{len(clashes)} id(s) already in the index, e.g. {clashes[0]!r}; give new examples new ids"
        )
    progress = progress or SilentProgress()
    out = Path(index_dir)
    plan = {"append_to": m.dataset_checksum, "dataset": dataset_checksum(new_examples), "models": [m.model_checksum]}
    shards = ShardDir.open(out.parent / f".{out.name}.append-shards", plan)
    added = _featurize_all(featurizer, new_examples, chunk_size, progress, "gradients (new examples)", shards, "final")
    checkpoint_vectors = []
    for i, ckpt in enumerate(m.checkpoints):
        old_vectors = np.load(out / checkpoint_file(i))
        if ckpt.model_checksum == m.model_checksum:
            new_part = added
        else:
            ckpt_loaded = load_model(
                ckpt.model_dir, m.task, ckpt.adapter_dir, dtype=m.model_dtype, device=str(featurizer.device)
            )
            if ckpt_loaded.checksum != ckpt.model_checksum:
                raise IndexIncompatibleError(
                    f"checkpoint {ckpt.model_dir} changed since the index was built; rebuild it"
                )
            ckpt_featurizer = build_featurizer(ckpt_loaded, config, m.max_length, batch_size=batch_size)
            new_part = _featurize_all(
                ckpt_featurizer,
                new_examples,
                chunk_size,
                progress,
                f"checkpoint {i + 1} (new examples)",
                shards,
                f"ckpt{i}",
            )
        checkpoint_vectors.append(np.concatenate([old_vectors, new_part]))
    vectors = np.concatenate([np.asarray(store.vectors, dtype=np.float32), added])
    examples = old + new_examples
    manifest = dataclasses.replace(
        m, n_examples=len(examples), dataset_checksum=dataset_checksum(examples), created_at=time.time()
    )
    token_ids = [featurizer.task.lexical_ids(e) for e in examples]
    store.close()
    write_index(
        out,
        manifest,
        vectors,
        examples,
        token_ids=token_ids,
        checkpoint_vectors=checkpoint_vectors,
        overwrite=True,
        progress=progress,
    )
    shards.remove()
    return manifest


def _featurize_all(
    featurizer: KroneckerFeaturizer,
    examples: list[Example],
    chunk_size: int,
    progress: Progress,
    stage: str,
    shards: ShardDir,
    prefix: str,
) -> np.ndarray:
    progress.start(stage, len(examples))
    vectors = np.zeros((len(examples), featurizer.dims), dtype=np.float32)
    for number, start in enumerate(range(0, len(examples), chunk_size)):
        chunk = examples[start : start + chunk_size]
        name = f"{prefix}-{number:06d}"
        done = shards.load(name, len(chunk), featurizer.dims)
        if done is None:
            done = featurizer.featurize(chunk, progress.advance).vectors
            shards.save(name, done)
        else:
            progress.advance(len(chunk))
        vectors[start : start + len(chunk)] = done
    progress.finish()
    return vectors
