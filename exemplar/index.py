"""An index as a whole: writing one (`write_index`: the store's files plus the estimators'),
opening one (`open_index`: its store and the featuriser of the model its manifest names,
checked against each other), and the one featuriser factory that build time and query time
share.

Used by the builder (`exemplar.build`), the explainer (`exemplar.explain`) and the worker;
it depends on neither of them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from exemplar.errors import IndexIncompatibleError, InvalidInputError, NotFoundError
from exemplar.estimators import BM25, BM25_DIR, DATAINF_FILE, datainf_matrices
from exemplar.gradients import KroneckerFeaturizer, ProjectionConfig
from exemplar.models import LoadedModel, load_model
from exemplar.progress import Progress, SilentProgress
from exemplar.search import build_direction_shards, build_faiss_shards, factory_string, shard_bounds
from exemplar.store import (
    EXAMPLES_DB,
    MANIFEST,
    NORMS,
    VECTOR_DTYPES,
    VECTORS,
    FaissGradientStore,
    Manifest,
    checkpoint_file,
    resolve_index,
    write_examples,
)
from exemplar.tasks import Example, make_task


def write_index(
    out_dir: str | Path,
    manifest: Manifest,
    vectors: np.ndarray,
    examples: Sequence[Example],
    *,
    token_ids: Sequence[list[int]] | None = None,
    checkpoint_vectors: Sequence[np.ndarray] = (),
    overwrite: bool = False,
    progress: Progress | None = None,
) -> Path:
    """Write a complete index to a temporary sibling directory, then rename it into place.

    ``manifest.index_type`` must already be a factory string (``search.factory_string``).
    """
    out = Path(out_dir)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.shape != (len(examples), manifest.dims) or manifest.n_examples != len(examples):
        raise InvalidInputError(
            f"vectors {vectors.shape} do not match {len(examples)} examples of {manifest.dims} dims"
        )
    if not np.isfinite(vectors).all():
        raise InvalidInputError("some gradients are not finite (NaN/inf); check the model and the data")
    if out.exists() and not overwrite:
        raise InvalidInputError(f"{str(out)!r} already exists; choose another --out or pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        if manifest.vector_dtype not in VECTOR_DTYPES:
            raise InvalidInputError(
                f"vector dtype must be one of {', '.join(VECTOR_DTYPES)}; got {manifest.vector_dtype!r}"
            )
        np.save(tmp / VECTORS, vectors.astype(manifest.vector_dtype))
        norms = np.linalg.norm(vectors, axis=1).astype(np.float32)  # (n,)
        np.save(tmp / NORMS, norms)
        n_layers = len(manifest.layer_names)
        np.save(tmp / DATAINF_FILE, datainf_matrices(vectors, n_layers, manifest.dims // max(1, n_layers)))
        if token_ids is not None:
            BM25.build(list(token_ids)).save(tmp / BM25_DIR)
        for i, extra in enumerate(checkpoint_vectors):
            np.save(tmp / checkpoint_file(i), np.ascontiguousarray(extra, dtype=np.float32))
        if factory_string(manifest.index_type, len(examples), manifest.dims) != manifest.index_type:
            raise InvalidInputError(f"index type {manifest.index_type!r} is not a resolved factory string")
        if manifest.index_type == "Flat":
            shard_bounds(len(examples), manifest.shards)  # validates the count; nothing to build
        else:
            bar = progress or SilentProgress()
            files = manifest.shards * (manifest.norm_buckets + 1)
            bar.start(f"search index {manifest.index_type} + directions", files, unit="file")
            build_faiss_shards(
                vectors,
                norms,
                manifest.index_type,
                manifest.shards,
                tmp,
                buckets=manifest.norm_buckets,
                seed=manifest.seed,
                on_part=bar.advance,
            )
            build_direction_shards(vectors, manifest.shards, tmp, on_part=bar.advance)
            bar.finish()
        write_examples(tmp / EXAMPLES_DB, examples)
        (tmp / MANIFEST).write_text(manifest.to_json(out))  # records `out`: a moved model is found beside it
        if out.exists():  # swap: the old version stays complete until the new one is in place
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


FEATURIZER_FIELDS = (
    "task",
    "model_dir",
    "adapter_dir",
    "model_checksum",
    "params",
    "layer_names",
    "proj_dim",
    "seed",
    "max_length",
    "model_dtype",
)
"""Manifest fields that decide the featuriser: two indexes that agree on them share one loaded model."""


def same_featurizer(a: Manifest, b: Manifest) -> bool:
    """Whether the vectors of two indexes come from the same model, layers and projection."""
    return all(getattr(a, name) == getattr(b, name) for name in FEATURIZER_FIELDS)


def open_index(
    index_dir: str | Path,
    *,
    batch_size: int = 16,
    reuse: tuple[Manifest, KroneckerFeaturizer] | None = None,
    model_dir: str | Path | None = None,
    adapter_dir: str | Path | None = None,
    device: str = "auto",
    dtype: str | None = None,
) -> tuple[FaissGradientStore, KroneckerFeaturizer]:
    """The store and the featuriser of the model named by its manifest, checked against each other.

    `model_dir` and `adapter_dir` say where the model is when it is not where the manifest says
    (another host, a container); the checksum still has to match the one the index was built from.
    The model is loaded onto `device` in the precision the index was built with; another `dtype`
    would change the vectors and is refused.

    `index_dir` may be a versioned root: its current version is opened (`store.resolve_index`).
    With `reuse` (the manifest and featuriser of an index already open), a new version built
    from the same model and projection (`same_featurizer`) gets that featuriser instead of a
    second copy of the model: a hot swap after `index-builder append` holds one model, not two.
    """
    store = FaissGradientStore(resolve_index(index_dir))
    m = store.manifest
    if reuse is not None and same_featurizer(reuse[0], m) and reuse[1].batch_size == batch_size:
        return store, reuse[1]
    model_dir = model_dir if model_dir is not None else m.model_dir
    adapter_dir = adapter_dir if adapter_dir is not None else m.adapter_dir
    for what, path, option in (("model", model_dir, "--model"), ("adapter", adapter_dir, "--adapter")):
        if path is not None and not Path(path).is_dir():
            raise NotFoundError(
                f"the {what} this index was built from is not at {str(path)!r} (moved, or built on another "
                f"host?): say where it is with {option} DIR (EXEMPLAR_{what.upper()}_DIR); its checksum must match"
            )
    if dtype is not None and dtype != m.model_dtype:
        raise IndexIncompatibleError(
            f"the index was built with {m.model_dtype} weights; queries in {dtype} would get other vectors: "
            f"serve it in {m.model_dtype} (leave the dtype out), or rebuild it with --dtype {dtype}"
        )
    loaded = load_model(model_dir, m.task, adapter_dir, dtype=m.model_dtype, device=device)
    config = ProjectionConfig(params=m.params, proj_dim=m.proj_dim, seed=m.seed)
    featurizer = build_featurizer(loaded, config, m.max_length, batch_size=batch_size)
    m.check_model(
        task=loaded.task,
        model_checksum=loaded.checksum,
        params=m.params,
        layer_names=featurizer.layer_names,
        proj_dim=m.proj_dim,
        seed=m.seed,
    )
    return store, featurizer


def build_featurizer(
    loaded: LoadedModel, config: ProjectionConfig, max_length: int, *, batch_size: int = 16
) -> KroneckerFeaturizer:
    """The one featuriser used at build time and query time."""
    task = make_task(loaded.task, loaded.tokenizer, label2id=loaded.label2id, max_length=max_length)
    return KroneckerFeaturizer(loaded.model, task, config, batch_size=batch_size)


def default_params(loaded: LoadedModel) -> str:
    """LoRA matrices when an adapter is loaded (as in the paper), otherwise every linear layer."""
    return "lora" if loaded.adapter_dir is not None else "linear"
