"""`index-builder`: build a gradient index from a model directory and a JSONL training set."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from tqdm import tqdm

from exemplar.errors import ExemplarError
from worker.keys import DEFAULT_QUEUE

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


class TqdmProgress:
    """`exemplar.progress.Progress` shown as tqdm bars (rate and ETA) on stderr."""

    def __init__(self) -> None:
        self.bar: tqdm | None = None

    def start(self, stage: str, total: int, unit: str = "ex") -> None:
        self.finish()
        self.bar = tqdm(total=total, desc=stage, unit=unit, file=sys.stderr, dynamic_ncols=True)

    def advance(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def finish(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


@app.command()
def build(
    model: Annotated[Path, typer.Option(help="local Hugging Face model directory (or a PEFT adapter directory)")],
    task: Annotated[str, typer.Option(help="classification | causal-lm")],
    data: Annotated[
        Path,
        typer.Option(
            help="training set: JSONL, Parquet, or a datasets save_to_disk directory; rows {id?, text, text_pair?, "
            "label}, {id?, prompt, response} or {id?, messages}"
        ),
    ],
    out: Annotated[Path, typer.Option(help="index directory to create")],
    params: Annotated[
        str | None, typer.Option(help="lora | linear | regex:PATTERN (default: lora with an adapter, else linear)")
    ] = None,
    proj_dim: Annotated[int, typer.Option(help="projected dims per tracked layer (a perfect square)")] = 64,
    seed: Annotated[int, typer.Option(help="projection seed")] = 0,
    lora: Annotated[Path | None, typer.Option(help="PEFT LoRA adapter directory to apply on top of --model")] = None,
    base_model: Annotated[
        Path | None,
        typer.Option(help="with --model ADAPTER_DIR: the base model's local directory (its config may name a Hub id)"),
    ] = None,
    max_length: Annotated[
        int | None, typer.Option(help="max tokens per example (default 128 classification, 256 causal-lm)")
    ] = None,
    truncate: Annotated[
        bool, typer.Option(help="cut over-long inputs to --max-length instead of reporting them as bad rows")
    ] = False,
    batch_size: Annotated[int, typer.Option(help="examples per forward/backward")] = 16,
    shard_size: Annotated[int, typer.Option(help="examples per saved shard (a crashed build resumes from them)")] = 256,
    vector_dtype: Annotated[
        str, typer.Option(help="float32 | float16 (half the memory for vectors and index)")
    ] = "float32",
    index_type: Annotated[
        str,
        typer.Option(
            help="search index: auto (default: flat up to 128 MiB of vectors, hnsw above) | flat (exact scan) | ivf | "
            "ivf_sq (fp16 codes) | hnsw | ivf_pq, or a FAISS factory string such as 'IVF4096,SQfp16'; see docs/search.md"
        ),
    ] = "auto",
    search_shards: Annotated[int, typer.Option(help="split the FAISS search index into this many files")] = 1,
    version: Annotated[
        str | None,
        typer.Option(
            help="write the index as version NAME of the versioned root --out (side by side with the others) and "
            "publish it as CURRENT; a server on --out picks it up on reload or by its file watch"
        ),
    ] = None,
    publish: Annotated[bool, typer.Option(help="with --version: make the new version CURRENT")] = True,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads (default: all cores)")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N (auto: a GPU when torch sees one)")] = "auto",
    dtype: Annotated[
        str,
        typer.Option(
            help="float32 | bfloat16 | float16: the weights' precision (projections and sums stay float32); the "
            "index records it and queries use the same"
        ),
    ] = "float32",
    skip_bad_rows: Annotated[bool, typer.Option(help="skip invalid rows (reported) instead of failing")] = False,
    overwrite: Annotated[bool, typer.Option(help="replace an existing index at --out")] = False,
    checkpoint: Annotated[
        list[str] | None,
        typer.Option(
            help="DIR=LR, repeatable: also index gradients under this checkpoint (model or adapter dir) for TracIn"
        ),
    ] = None,
    distributed: Annotated[
        bool,
        typer.Option(help="compute shards on exemplar-worker processes through Redis (shared --out and --model)"),
    ] = False,
    redis: Annotated[str, typer.Option(help="Redis URL of the --distributed queue")] = "redis://127.0.0.1:6379/0",
    queue: Annotated[str, typer.Option(help="RQ queue of the --distributed shard jobs")] = DEFAULT_QUEUE,
    retries: Annotated[int, typer.Option(help="--distributed: re-runs of a shard that failed or lost its worker")] = 3,
) -> None:
    """Featurise every training example and publish the index at --out."""
    import torch

    from exemplar.build import build_index
    from exemplar.gradients import ProjectionConfig
    from exemplar.index import default_params
    from exemplar.jsonl import read_examples_jsonl, too_long_check
    from exemplar.models import load_model
    from exemplar.store import CURRENT, MANIFEST, check_version_name, publish_version
    from exemplar.tasks import make_task

    if threads:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    try:
        ProjectionConfig(params=params or "linear", proj_dim=proj_dim, seed=seed).validate()
        root = out
        if version is not None:
            if (root / MANIFEST).exists():
                fail(f"{root} is a single index, not a versioned root; choose another --out for --version")
            out = root / check_version_name(version)
        if out.exists() and not overwrite:
            fail(f"{out} already exists; choose another --out or pass --overwrite")
        loaded = load_model(model, task, lora, dtype=dtype, device=device, base_model=base_model)
        max_length = max_length or (128 if task == "classification" else 256)
        task_obj = make_task(task, loaded.tokenizer, label2id=loaded.label2id, max_length=max_length)
        examples, errors = read_examples_jsonl(
            data,
            task,
            list(loaded.label2id) if loaded.label2id else None,
            check=None if truncate else too_long_check(task_obj),
        )
        for error in errors[:20]:
            typer.secho(f"{data}:{error}", fg=typer.colors.YELLOW, err=True)
        if len(errors) > 20:
            typer.secho(f"... and {len(errors) - 20} more bad rows", fg=typer.colors.YELLOW, err=True)
        if errors and not skip_bad_rows:
            fail(f"{len(errors)} bad row(s) in {data}; fix them or pass --skip-bad-rows")
        config = ProjectionConfig(params=params or default_params(loaded), proj_dim=proj_dim, seed=seed)
        resumed: list[int] = []
        checkpoints = []
        for spec in checkpoint or []:
            path, sep, lr = spec.rpartition("=")
            try:
                rate = float(lr)
            except ValueError:
                rate = float("nan")
            if not sep or not rate > 0:
                fail(f"--checkpoint must be DIR=LR with a learning rate > 0; got {spec!r}")
            checkpoints.append((load_model(path, task, dtype=dtype, device=loaded.device), rate))
        runner = None
        if distributed:
            from worker.distributed import RQShardRunner

            runner = RQShardRunner(
                redis, queue=queue, retries=retries, progress=TqdmProgress(), notify=lambda m: typer.echo(m, err=True)
            )
        manifest = build_index(
            loaded,
            examples,
            out,
            config,
            max_length=max_length,
            batch_size=batch_size,
            chunk_size=shard_size,
            resumed=resumed,
            vector_dtype=vector_dtype,
            overwrite=overwrite,
            checkpoints=checkpoints,
            progress=TqdmProgress(),
            runner=runner,
            index_type=index_type,
            search_shards=search_shards,
        )
        if version is not None and publish:
            publish_version(root, version)
            typer.echo(f"published version {version} as {root / CURRENT}", err=True)
    except ExemplarError as exc:
        fail(str(exc))
        return
    elapsed = time.perf_counter() - started
    size = sum(p.stat().st_size for p in out.iterdir())
    typer.echo(
        f"built {out}: {manifest.n_examples} examples ({len(errors)} skipped), {manifest.dims} dims "
        f"({len(manifest.layer_names)} layers x {manifest.proj_dim}), {size / 1e6:.1f} MB, {elapsed:.1f} s"
        + (f", resumed {resumed[0]} finished shard(s) of an interrupted build" if resumed and resumed[0] else "")
    )


@app.command()
def append(
    index: Annotated[Path, typer.Option(help="existing index directory (a versioned root: its CURRENT version)")],
    data: Annotated[Path, typer.Option(help="the new examples: JSONL, Parquet or a datasets directory (as for build)")],
    batch_size: Annotated[int, typer.Option(help="examples per forward/backward")] = 16,
    shard_size: Annotated[int, typer.Option(help="examples per saved shard")] = 256,
    skip_bad_rows: Annotated[bool, typer.Option(help="skip invalid rows (reported) instead of failing")] = False,
) -> None:
    """Add examples to an index under its manifest (same model checksum, projection, parameters)."""
    from exemplar.build import append_index
    from exemplar.jsonl import read_examples_jsonl
    from exemplar.store import read_manifest, resolve_index

    started = time.perf_counter()
    try:
        index = resolve_index(index)
        m = read_manifest(index)
        examples, errors = read_examples_jsonl(data, m.task, m.labels)
        for error in errors[:20]:
            typer.secho(f"{data}:{error}", fg=typer.colors.YELLOW, err=True)
        if errors and not skip_bad_rows:
            fail(f"{len(errors)} bad row(s) in {data}; fix them or pass --skip-bad-rows")
        manifest = append_index(index, examples, batch_size=batch_size, chunk_size=shard_size, progress=TqdmProgress())
    except ExemplarError as exc:
        fail(str(exc))
        return
    typer.echo(
        f"appended {len(examples)} examples to {index}: now {manifest.n_examples} examples, "
        f"{time.perf_counter() - started:.1f} s; a running exemplar-api serves it after POST /v1/admin/reload"
    )


@app.command("publish")
def publish_cmd(
    root: Annotated[Path, typer.Argument(help="versioned index root (built with --version)")],
    version: Annotated[str, typer.Argument(help="the version to serve, e.g. to roll back")],
) -> None:
    """Make VERSION the one ROOT serves (CURRENT is replaced atomically); servers switch on reload or file watch."""
    from exemplar.store import publish_version

    try:
        path = publish_version(root, version)
    except ExemplarError as exc:
        fail(str(exc))
        return
    typer.echo(f"{root} now serves {path}")


@app.command()
def versions(root: Annotated[Path, typer.Argument(help="versioned index root")]) -> None:
    """List the versions of a versioned root, oldest first; * marks the one served."""
    from exemplar.store import list_versions

    try:
        found = list_versions(root)
    except ExemplarError as exc:
        fail(str(exc))
        return
    if not found:
        fail(f"{root} holds no complete index version; build one with index-builder build --out {root} --version NAME")
    for name, manifest, current in found:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(manifest.created_at))
        typer.echo(
            f"{'*' if current else ' '} {name}  {manifest.n_examples} examples  {manifest.index_type}"
            f"  x{manifest.shards}  {created} UTC"
        )


@app.command()
def demo(
    name: Annotated[
        str, typer.Argument(help="tweets | chat | tiny | large (117,000 WordNet glosses; tens of minutes)")
    ] = "tweets",
    root: Annotated[Path, typer.Option(help="cache directory of the demos")] = Path(".cache/demos"),
) -> None:
    """Prepare a demo (fine-tune + index build, cached) and print its index directory."""
    from exemplar.research.demos import prepare

    started = time.perf_counter()
    try:
        index_dir = prepare(name, root, TqdmProgress())
    except ExemplarError as exc:
        fail(str(exc))
        return
    typer.secho(f"demo {name!r} ready in {time.perf_counter() - started:.1f} s: {index_dir}", err=True)
    typer.echo(str(index_dir))


def main() -> None:
    app()
