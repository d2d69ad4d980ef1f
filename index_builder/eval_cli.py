"""`exemplar-eval`: the paper's evaluation on an index (scores, fine-tuning validation, report)."""

from __future__ import annotations

import json
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from exemplar.errors import ExemplarError
from exemplar.tasks import Example
from index_builder.cli import TqdmProgress, fail

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


def _queries(path: Path, task: str, n: int) -> list[Example]:
    from exemplar.jsonl import read_examples_jsonl

    examples, errors = read_examples_jsonl(path, task)
    if errors:
        fail(f"{len(errors)} bad row(s) in {path}, first: {errors[0]}")
    return examples[:n]


def _strs(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _invocation() -> str:
    """This command line as the user typed it after the program name (e.g. `exemplar-eval report --records F`)."""
    return "exemplar-eval " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _ints(value: str) -> list[int]:
    try:
        return [int(v) for v in _strs(value)]
    except ValueError:
        fail(f"expected comma-separated integers, got {value!r}")
        return []


@app.command()
def validate(
    index: Annotated[Path, typer.Option(help="index directory")],
    queries: Annotated[Path, typer.Option(help="JSONL test instances (same format as the training data)")],
    n: Annotated[int, typer.Option(help="how many test instances")] = 50,
    strategies: Annotated[
        str,
        typer.Option(
            help="comma-separated strategies to validate, each STRATEGY[:ORDERING][:LAMBDA] "
            "(e.g. topk:most_helpful, balanced:0.25; default ordering most_influential, lambda 1); "
            "the first is compared with each of the others, paired over the same queries"
        ),
    ] = "reconstruct,topk,balanced",
    ks: Annotated[str, typer.Option("--k", help="comma-separated k values")] = "5,10",
    estimator: Annotated[str, typer.Option(help="estimator of the influence-based strategies")] = "grad_dot",
    step: Annotated[
        str,
        typer.Option(
            help="mean: one step on the selection's mean loss (the paper's protocol); weighted: on the losses "
            "weighted by the selection's simplex weights (the explanation as served; random baselines too)"
        ),
    ] = "mean",
    out: Annotated[Path | None, typer.Option(help="write per-pair records as JSON here")] = None,
) -> None:
    """One AdamW step on each selection: xi_plus, xi_jsd vs 5 random selections, Spearman and reliability."""
    from exemplar.explain import Explainer
    from exemplar.research.evaluation import parse_config, run_grid
    from exemplar.research.step_effects import paired_xi_plus, reliability, spearman

    try:
        configs = [parse_config(s, estimator) for s in _strs(strategies)]
        explainer = Explainer.from_index(index)
        test = _queries(queries, explainer.store.manifest.task, n)
        result = run_grid(
            explainer,
            test,
            estimators=(estimator,),
            ks=_ints(ks),
            validate_configs=configs,
            validate_ks=_ints(ks),
            bounds=False,
            validation_step=step,
            progress=TqdmProgress(),
        )
    except ExemplarError as exc:
        fail(str(exc))
        return
    recs = result.validation
    pos = [r for r in recs if r.srs_db > 0]
    protocol = "mean loss, the paper's protocol" if step == "mean" else "losses weighted by the simplex weights"
    typer.echo(f"{len(recs)} validated selections over {len(test)} test instances (one AdamW step on the {protocol})")
    typer.echo(
        f"Spearman(SRS, xi_plus): all {spearman([r.srs_ratio for r in recs], [r.xi_plus for r in recs]):.3f}, "
        f"SRS > 0 dB {spearman([r.srs_ratio for r in pos], [r.xi_plus for r in pos]):.3f} (n={len(pos)})"
    )
    typer.echo(f"Spearman(SRS, xi_jsd): all {spearman([r.srs_ratio for r in recs], [r.xi_jsd for r in recs]):.3f}")
    for strategy in sorted({r.strategy for r in recs}):
        xs = [r.xi_plus for r in recs if r.strategy == strategy]
        typer.echo(f"  {strategy:<32} mean xi_plus {sum(xs) / len(xs):+.3e}  (n={len(xs)})")
    reference = configs[0].validated_label
    if len(configs) > 1:
        typer.echo(f"{reference} minus each other strategy, paired over the same queries (95% t interval):")
    for p in paired_xi_plus(recs, reference):
        typer.echo(
            f"  k={p.k:<3} {p.strategy:<32} {p.mean:+.3e}  difference {p.difference:+.3e} "
            f"({p.lo:+.3e} .. {p.hi:+.3e}, n={p.n})"
        )
    for b in reliability(recs):
        typer.echo(
            f"  reliability bin ratio [{b['ratio_lo']:.3g}, {b['ratio_hi']:.3g}): n={b['n']:.0f} accuracy {b['accuracy']:.2f}"
        )
    if out is not None:
        out.write_text(json.dumps([asdict(r) for r in recs], indent=1))


@app.command()
def reproduce(
    demo: Annotated[str, typer.Option(help="tweets | chat | tiny | large")] = "tweets",
    queries: Annotated[
        int, typer.Option(help="held-out test instances (the demo's test split, then more unseen rows)")
    ] = 200,
    root: Annotated[Path, typer.Option(help="demo cache directory")] = Path(".cache/demos"),
    out: Annotated[Path, typer.Option(help="report directory")] = Path("docs/results"),
    estimators: Annotated[str, typer.Option(help="comma-separated estimators")] = "grad_dot,grad_cos,datainf,bm25",
    validate_queries: Annotated[
        int, typer.Option(help="how many of the queries also get the fine-tuning validation")
    ] = 100,
    validate_ks: Annotated[str, typer.Option(help="comma-separated k values of the validation")] = "1,5,10,25",
    validate_step: Annotated[
        str,
        typer.Option(
            help="mean: the paper's protocol; weighted: each selection stepped on its losses weighted by its "
            "simplex weights (beyond the paper)"
        ),
    ] = "mean",
    records: Annotated[
        Path | None, typer.Option(help="also write every per-query score and validation record (JSONL)")
    ] = None,
    index: Annotated[Path | None, typer.Option(help="evaluate this index instead of a demo (needs --test)")] = None,
    test_file: Annotated[Path | None, typer.Option("--test", help="JSONL test instances for --index")] = None,
    full_space: Annotated[
        bool,
        typer.Option(
            "--full-space/--projected-only",
            help="also score the paper's strategies (Grad-Dot, DataInf), random, reconstruct and every validated "
            "selection on the model's full gradients, with both solvers, and report both spaces",
        ),
    ] = True,
    full_space_seeds: Annotated[
        int, typer.Option(help="random selections scored in the full space per query and k (of the grid's 5)")
    ] = 5,
) -> None:
    """Run the grid (estimators x strategies x k) and write docs/results/<demo>.md with plots."""
    from exemplar.explain import Explainer
    from exemplar.research.demos import heldout, prepare
    from exemplar.research.evaluation import (
        GRADIENT_ESTIMATORS,
        KS,
        Config,
        best_paper_config,
        check_step,
        full_space_configs,
        run_grid,
        score_full_space,
        validate_selections,
    )
    from exemplar.research.records import write_records
    from exemplar.research.report import write_report

    command = _invocation()
    started = time.perf_counter()
    try:
        check_step(validate_step)  # before hours of grid, not after
        if index is not None:
            if test_file is None:
                fail("--index needs --test FILE.jsonl with the test instances")
                return
            index_dir, test_path = index, test_file
        else:
            index_dir = prepare(demo, root, TqdmProgress())
            test_path = heldout(demo, root, queries)
        explainer = Explainer.from_index(index_dir)
        test = _queries(test_path, explainer.store.manifest.task, queries)
        ests = _strs(estimators)
        vks = _ints(validate_ks)
        grid = run_grid(explainer, test, estimators=ests, ks=sorted({*KS, *vks}), progress=TqdmProgress())
        # the paper's strategies the paper validated (first estimator), plus, per k, the best
        # paper strategy by score of every gradient estimator: the xi_plus target's baselines
        fixed = [
            Config("-", "reconstruct"),
            Config(ests[0], "topk"),
            Config(ests[0], "balanced"),
            Config(ests[0], "divine"),
            Config(ests[0], "aide"),
            Config(ests[0], "topk", "least_influential"),
        ]
        configs_at: dict[int, list[Config]] = {}
        for k in vks:
            best = [best_paper_config(grid, e, k) for e in ests if e in GRADIENT_ESTIMATORS]
            configs_at[k] = fixed + [c for c in dict.fromkeys(best) if c is not None and c not in fixed]
        if full_space:  # the paper's strategies for every query, and every validated selection
            headline = full_space_configs(ests)
            validated = {c for configs in configs_at.values() for c in configs}
            wanted = [set(headline) | (validated if qi < validate_queries else set()) for qi in range(len(test))]
            score_full_space(explainer, test, grid, wanted, random_seeds=full_space_seeds, progress=TqdmProgress())
        t0 = time.perf_counter()
        grid.validation = validate_selections(
            explainer, test[:validate_queries], grid, configs_at, step=validate_step, progress=TqdmProgress()
        )
        grid.seconds["validation"] = time.perf_counter() - t0
    except ExemplarError as exc:
        fail(str(exc))
        return
    grid.seconds["total"] = time.perf_counter() - started
    summary = {**explainer.store.manifest.summary(), "full_dims": explainer.full.dims}
    path = write_report(grid, out, demo=demo, command=command, index_summary=summary)
    if records is not None:
        write_records(grid, records, meta={"demo": demo, "command": command, "index_summary": summary})
    typer.echo(f"wrote {path} in {grid.seconds['total']:.0f} s")


@app.command()
def report(
    records: Annotated[Path, typer.Option(help="records JSONL written by reproduce --records")],
    out: Annotated[Path, typer.Option(help="report directory")] = Path("docs/results"),
    demo: Annotated[str | None, typer.Option(help="report name (default: the run's demo)")] = None,
) -> None:
    """Render docs/results/<demo>.md and its plots again from a reproduce run's records, without re-running."""
    from exemplar.research.records import read_records
    from exemplar.research.report import write_report

    try:
        grid, meta = read_records(records)
    except ExemplarError as exc:
        fail(str(exc))
        return
    name = demo or meta.get("demo")
    if not name:
        fail(f"{records} has no meta line naming its demo: pass --demo")
        return
    command = meta.get("command", "(not recorded)")
    rendered_by = _invocation()
    path = write_report(
        grid, out, demo=name, command=command, index_summary=meta.get("index_summary", {}), rendered_by=rendered_by
    )
    typer.echo(f"wrote {path}")


def main() -> None:
    app()
