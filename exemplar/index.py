"""Opening an index: its store and the featuriser of the model its manifest names, checked
against each other; the one featuriser factory that build time and query time share.

Used by the builder (`exemplar.build`), the explainer (`exemplar.explain`) and the worker;
it depends on neither of them.
"""

from __future__ import annotations

from pathlib import Path

from exemplar.gradients import KroneckerFeaturizer, ProjectionConfig
from exemplar.models import LoadedModel, load_model
from exemplar.store import FaissGradientStore, resolve_index
from exemplar.tasks import make_task


def open_index(index_dir: str | Path, *, batch_size: int = 16) -> tuple[FaissGradientStore, KroneckerFeaturizer]:
    """The store and the featuriser of the model named by its manifest, checked against each other.

    `index_dir` may be a versioned root: its current version is opened (`store.resolve_index`).
    """
    store = FaissGradientStore(resolve_index(index_dir))
    m = store.manifest
    loaded = load_model(m.model_dir, m.task, m.adapter_dir)
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
