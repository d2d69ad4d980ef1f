"""The reproduction report: markdown tables, the paper's numbers side by side, and PNG plots.

`write_report` writes the markdown and has `exemplar.research.plots` draw the figures; the
records a run writes, and reads back to render its report again, are `exemplar.research.records`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from exemplar.research.evaluation import GRADIENT_ESTIMATORS, PAPER_GRADIENT_ESTIMATORS, GridResult
from exemplar.research.plots import plot_grid, plot_validation
from exemplar.research.step_effects import PairedXiPlus, ValidationRecord, paired_xi_plus, reliability, spearman

PAPER_K10 = {  # paper.md section 6, preliminary OLMo-2 numbers at k = 10 (mean-of-ratios dB)
    ("datainf", "top-k most influential"): -28.7,
    ("datainf", "FL lambda=1"): -22.2,
    ("datainf", "divine"): -15.5,
    ("-", "random"): -2.4,
    ("datainf", "top-k least influential"): -0.2,
    ("bm25", "top-k most influential"): 21.9,
}
PAPER_FL_GAIN = {1: 9.0, 5: 5.6, 10: 4.8, 25: 5.2}  # FL lambda=1 minus top-k, DataInf
PAPER_SPEARMAN = {"all": 0.093, "positive": 0.575}  # SRS vs xi_plus
ESTIMATOR_ORDER = (*GRADIENT_ESTIMATORS, "bm25")
PAPER_STRATEGIES = ("top-k most influential", "FL lambda=1", "divine", "aide", "random")


def _fmt(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:+.1f}"


def _cell(table: dict[tuple[str, str, int], dict[str, float]], est: str, label: str, k: int, metric: str) -> float:
    """One aggregate of the table, nan where the grid has no such (estimator, strategy, k)."""
    return table.get((est, label, k), {}).get(metric, math.nan)


def _best_paper(table: dict[tuple[str, str, int], dict[str, float]], est: str, k: int) -> tuple[str, float]:
    """The best of the paper's strategies (any ordering / lambda) for this estimator and k."""
    candidates = [
        (label, v["mean_of_ratios_db"])
        for (e, label, kk), v in table.items()
        if kk == k and (e == est or (e == "-" and label == "random")) and label != "reconstruct"
    ]
    return max(candidates, key=lambda c: c[1])


def _ceiling(result: GridResult, k: int) -> float:
    """The certified mean-of-ratios ceiling at ``k`` (+inf without bounds): any selection, tighter at k = 1."""
    if not result.bounds:
        return math.inf
    return result.bound_db("best_single") if k == 1 else result.bound_db("any_selection")


def write_report(
    result: GridResult,
    out_dir: Path,
    *,
    demo: str,
    command: str,
    index_summary: dict[str, object],
    rendered_by: str | None = None,
) -> Path:
    """Write `<out_dir>/<demo>.md` and its PNG plots; returns the markdown path.

    ``rendered_by`` is the command that rendered the report again from a run's records
    (`records.read_records`), shown under the command of the run itself.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    table = result.table()
    ks = sorted({k for (_, _, k) in table})
    estimators = [e for e in ESTIMATOR_ORDER if any(key[0] == e for key in table)]
    lines = [
        f"# Reproduction report: `{demo}` demo",
        "",
        "Produced by:",
        "",
        f"```\n{command}\n```",
        "",
        *([f"Rendered again from that run's records by `{rendered_by}`.", ""] if rendered_by else []),
        f"{result.n_queries} held-out test queries; index: {index_summary.get('n_examples')} training examples, "
        f"{index_summary.get('dims')} dims ({index_summary.get('params')} parameters), task {index_summary.get('task')}. "
        f"Scores are the paper's Selection Relevance Score (pinv + simplex projection), aggregated as the paper does "
        f"(mean of linear ratios, then dB); random is averaged over 5 seeds per query. "
        + (
            "The tables up to the full-space section score on the index's projected vectors, as the "
            "paper's function is scored there; that section scores the same selections on the model's full "
            "gradients, where the paper defines the score."
            if result.spaces()
            else "Every score here is on the index's projected vectors."
        ),
        "",
        "Wall time (s): " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(result.seconds.items())),
        "",
    ]
    for est in estimators:
        labels = sorted({label for (e, label, _) in table if e == est})
        lines += [
            f"## Estimator `{est}`: mean-of-ratios dB",
            "",
            "| strategy | " + " | ".join(f"k={k}" for k in ks) + " |",
            "|---|" + "---|" * len(ks),
        ]
        for label in [*labels, "random", "reconstruct"]:
            e = est if label not in ("random", "reconstruct") else "-"
            name = label if e == est else f"{label} (estimator-independent)"
            lines.append(
                f"| {name} | " + " | ".join(_fmt(_cell(table, e, label, k, "mean_of_ratios_db")) for k in ks) + " |"
            )
        lines.append("")
    lines += [
        "## Ratio of expectations (dB), for comparison",
        "",
        "| estimator | strategy | " + " | ".join(f"k={k}" for k in ks) + " |",
        "|---|---|" + "---|" * len(ks),
    ]
    for est in estimators:
        for label in ("top-k most influential", "FL lambda=1"):
            lines.append(
                f"| {est} | {label} | "
                + " | ".join(_fmt(_cell(table, est, label, k, "ratio_of_expectations_db")) for k in ks)
                + " |"
            )
    for label in ("random", "reconstruct"):
        lines.append(
            f"| - | {label} | "
            + " | ".join(_fmt(_cell(table, "-", label, k, "ratio_of_expectations_db")) for k in ks)
            + " |"
        )
    lines.append("")

    lines += [
        "## Gain of FL lambda=1 over naive top-k (dB)",
        "",
        "| estimator | " + " | ".join(f"k={k}" for k in ks) + " |",
        "|---|" + "---|" * len(ks),
    ]
    gains: dict[str, list[float]] = {}
    for est in estimators:
        gains[est] = [
            _cell(table, est, "FL lambda=1", k, "mean_of_ratios_db")
            - _cell(table, est, "top-k most influential", k, "mean_of_ratios_db")
            for k in ks
        ]
        lines.append(f"| {est} | " + " | ".join(_fmt(g) for g in gains[est]) + " |")
    lines.append("| paper (DataInf, OLMo-2) | " + " | ".join(_fmt(PAPER_FL_GAIN.get(k, math.nan)) for k in ks) + " |")
    lines.append("")

    lines += [
        "## Side by side with the paper (k = 10, mean-of-ratios dB)",
        "",
        "| estimator | strategy | paper (OLMo-2, Tulu) | ours |",
        "|---|---|---|---|",
    ]
    for (est, label), paper in PAPER_K10.items():
        ours = _cell(table, est, label, 10, "mean_of_ratios_db")
        lines.append(f"| {est} | {label} | {paper:+.1f} | {_fmt(ours)} |")
    lines.append("")

    lines += ["## The paper's findings and our targets, checked on this run", ""]
    for est in [e for e in estimators if e in GRADIENT_ESTIMATORS]:
        below = [
            table[(est, "top-k most influential", k)]["mean_of_ratios_db"]
            < table[("-", "random", k)]["mean_of_ratios_db"]
            for k in ks
            if k <= 10
        ]
        beats = [gains[est][i] > 0 for i in range(len(ks))]
        margins = []
        unreachable = []
        for k in ks:
            best_label, best = _best_paper(table, est, k)
            margins.append((k, table[("-", "reconstruct", k)]["mean_of_ratios_db"] - best, best_label))
            ceiling = _ceiling(result, k)
            if best + 3 > ceiling:
                unreachable.append(f"k={k} (best paper + 3 dB = {best + 3:+.1f} dB > ceiling {ceiling:+.1f} dB)")
        lines.append(
            f"- `{est}`: top-k most influential below random at every k <= 10: **{all(below)}**; "
            f"FL lambda=1 beats top-k at every k: **{all(beats)}**; reconstruct minus the best paper strategy: "
            + ", ".join(f"k={k} {m:+.1f} dB (vs {lab})" for k, m, lab in margins)
            + f"; >= +3 dB at every k: **{all(m >= 3 for _, m, _ in margins)}**"
            + (f"; unreachable by any selection at {', '.join(unreachable)}" if unreachable else "")
        )
    if result.bounds:
        lines.append(
            f"- Certified ceilings over the whole index (no selection method can score above them): "
            f"the best single example {_fmt(result.bound_db('best_single'))} dB (the exact k=1 optimum; "
            f"reconstruct at k=1: {_fmt(_cell(table, '-', 'reconstruct', 1, 'mean_of_ratios_db'))} dB), "
            f"any selection of any size {_fmt(result.bound_db('any_selection'))} dB "
            "(`relevance.best_single_ratio`, `relevance.ratio_upper_bound`)."
        )
    if "bm25" in estimators:
        bm = [table[("bm25", "top-k most influential", k)]["mean_of_ratios_db"] for k in ks]
        lines.append(
            "- `bm25` top-k most influential: "
            + ", ".join(f"k={k} {v:+.1f} dB" for k, v in zip(ks, bm, strict=True))
            + f"; strongly positive (> +10 dB) at every k: **{all(v > 10 for v in bm)}**"
        )
    lines.append("")

    if result.spaces():
        lines += _space_section(result, estimators, ks, index_summary)
    if result.validation:
        lines += _validation_section(result, out_dir, demo)
        plot_validation(result, out_dir, demo)
    plot_grid(table, estimators, ks, out_dir, demo, paper_gain=PAPER_FL_GAIN)
    lines += [
        "## Plots",
        "",
        f"![dB by strategy and k]({demo}_db_by_k.png)",
        "",
        f"![gain over top-k]({demo}_gain.png)",
        "",
    ]
    if result.validation:
        lines += [f"![validation]({demo}_validation.png)", ""]
    path = out_dir / f"{demo}.md"
    path.write_text("\n".join(lines))
    return path


SPACE_NAMES = {
    "projected/paper": "projected, paper",
    "projected/exact": "projected, exact",
    "full/paper": "full, paper",
    "full/exact": "full, exact",
}


def _space_section(
    result: GridResult, estimators: list[str], ks: list[int], index_summary: dict[str, object]
) -> list[str]:
    """Every selection's score in both spaces with both solvers: median per query and mean of ratios."""
    spaces = result.spaces()
    table = result.space_table()

    def cell(est: str, label: str, k: int, key: str) -> str:
        v = table.get((est, label, k, key))
        if v is None:
            return "n/a"
        return f"{_fmt(v['median_db'])} ({_fmt(v['mean_of_ratios_db'])})"

    def median(est: str, label: str, k: int, key: str) -> float:
        return table.get((est, label, k, key), {}).get("median_db", math.nan)

    lines = [
        "## In the model's full gradient space, with both solvers",
        "",
        f"The same selections scored on the full loss gradients of the tracked weights "
        f"({_count(index_summary.get('full_dims'))} dims; exact per-layer inner products, `exemplar.fullspace`) "
        f"and on the projection ({index_summary.get('dims')} dims), each with the paper's solver (`paper`: "
        "torch's pinv at its default float32 tolerance, which drops more of the spectrum as the dimension "
        "grows and returns uniform weights at d >= 8.4M) and the exact simplex least squares (`exact`). "
        f"Each cell: the median over queries of each query's dB (random: the mean of the ratios of its "
        f"{_full_seeds(result)} seed(s) scored here), then the paper's mean of linear ratios in dB in parentheses; "
        f"{_full_queries(result)}. {_products_note(result)}",
        "",
    ]
    shown = ("top-k most influential", "FL lambda=1", "divine", "aide")
    for k in ks:
        lines += [
            f"### k = {k}",
            "",
            "| estimator | strategy | " + " | ".join(SPACE_NAMES[s] for s in spaces) + " |",
            "|---|---|" + "---|" * len(spaces),
        ]
        for est in estimators:
            for label in shown:
                if any((est, label, k, s) in table for s in spaces):
                    lines.append(f"| {est} | {label} | " + " | ".join(cell(est, label, k, s) for s in spaces) + " |")
        for label in ("random", "reconstruct"):
            lines.append(f"| - | {label} | " + " | ".join(cell("-", label, k, s) for s in spaces) + " |")
        lines.append("")
    lines += ["The paper's central finding, per space and solver (median per query):", ""]
    small = [k for k in ks if k <= 10]
    scored = [
        e
        for e in estimators
        if e in GRADIENT_ESTIMATORS
        and all((e, label, k, "full/exact") in table for label in ("top-k most influential", "FL lambda=1") for k in ks)
    ]
    for est in scored:
        for key in spaces:
            topk = [median(est, "top-k most influential", k, key) for k in small]
            fl = [median(est, "FL lambda=1", k, key) for k in small]
            margins = []
            for k in ks:
                best = max(
                    (median(e, label, k, key), f"{e} {label}")
                    for (e, label, kk, kk_key) in table
                    if kk == k
                    and kk_key == key
                    and label != "reconstruct"
                    and (e == est or label == "random")
                    and table[(e, label, kk, kk_key)]["n_queries"] == table[("-", "reconstruct", k, key)]["n_queries"]
                )
                margins.append(f"k={k} {median('-', 'reconstruct', k, key) - best[0]:+.1f} dB (vs {best[1]})")
            lines.append(
                f"- `{est}`, {SPACE_NAMES[key]}: top-k most influential below 0 dB at every k <= 10: "
                f"**{all(v < 0 for v in topk)}** ({', '.join(_fmt(v) for v in topk)}); FL lambda=1 above 0 dB: "
                f"**{all(v > 0 for v in fl)}** ({', '.join(_fmt(v) for v in fl)}); FL lambda=1 above top-k: "
                f"**{all(f > t for f, t in zip(fl, topk, strict=True))}**; reconstruct minus the best paper "
                f"strategy scored on the same queries: {', '.join(margins)}"
            )
    lines.append("")
    return lines


def _count(value: object) -> str:
    return f"{value:,}" if isinstance(value, int) else "n/a"


def _full_seeds(result: GridResult) -> int:
    """How many random seeds per query and k carry full-space scores."""
    counts: dict[tuple[int, int], int] = defaultdict(int)
    for r in result.records:
        if r.config.strategy == "random" and "full/exact" in r.scores:
            counts[(r.query, r.k)] += 1
    return max(counts.values(), default=0)


def _full_queries(result: GridResult) -> str:
    """Which queries carry full-space scores for which strategies, in words."""
    per_query: dict[int, int] = defaultdict(int)
    for r in result.records:
        if "full/exact" in r.scores:
            per_query[r.query] += 1
    every = len(per_query)
    scored = f"{every} of {result.n_queries} queries are scored in the full space"
    if not result.validation:
        return scored + " (no selection of this run was validated by fine-tuning)"
    validated = len({v.query for v in result.validation})
    return (
        f"{scored}, the {validated} validated ones for every validated selection as well "
        "(n/a: a strategy not scored there)"
    )


def _validation_section(result: GridResult, out_dir: Path, demo: str) -> list[str]:
    recs = result.validation
    ratios = [r.srs_ratio for r in recs]
    pos = [r for r in recs if r.srs_db > 0]
    ks = sorted({r.k for r in recs})
    by: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in recs:
        by[r.strategy][r.k].append(r.xi_plus)
    steps = sorted({r.step for r in recs})
    protocol = {
        "mean": "on the mean loss of the selection: the paper's protocol",
        "weighted": "on the losses weighted by the selection's simplex weights, random baselines too: "
        "the explanation as served, beyond the paper's protocol",
    }
    lines = [
        "## Validation by fine-tuning (one AdamW step, lr 1e-5, on the selection)",
        "",
        f"{len(recs)} (query, selection) pairs, each against 5 random selections of the same k; each step "
        + "; ".join(protocol.get(s, s) for s in steps)
        + ".",
        "",
        "| | ours (all) | ours (SRS > 0 dB) | paper (all) | paper (SRS > 0 dB) |",
        "|---|---|---|---|---|",
        f"| Spearman(SRS, xi_plus) | {spearman(ratios, [r.xi_plus for r in recs]):.3f} | "
        f"{spearman([r.srs_ratio for r in pos], [r.xi_plus for r in pos]):.3f} (n={len(pos)}) | 0.093 | 0.575 |",
        f"| Spearman(SRS, xi_jsd) | {spearman(ratios, [r.xi_jsd for r in recs]):.3f} | "
        f"{spearman([r.srs_ratio for r in pos], [r.xi_jsd for r in pos]):.3f} | 0.073 | 0.374 |",
        *_space_spearman(recs),
        "",
        "Mean xi_plus (log-likelihood gain over random; > 0 = the selection supports the output more than random) "
        "per strategy; besides the paper's strategies on the first estimator, each gradient estimator's best paper "
        "strategy by score at that k is validated (- where it is not the best at that k):",
        "",
        "| strategy | " + " | ".join(f"k={k}" for k in ks) + " | mean |",
        "|---|" + "---|" * (len(ks) + 1),
    ]
    for strategy, per_k in sorted(by.items(), key=lambda kv: -np.mean([x for v in kv[1].values() for x in v])):
        all_x = [x for v in per_k.values() for x in v]
        lines.append(
            f"| {strategy} | "
            + " | ".join(f"{np.mean(per_k[k]):+.2e}" if k in per_k else "-" for k in ks)
            + f" | {np.mean(all_x):+.2e} |"
        )
    if "reconstruct" in by:
        lines += ["", _xi_plus_target(recs, ks)]
    lines += [
        "",
        "Reliability (predicting xi_plus > 0 from SRS > 0 dB), 20 log-spaced bins of the linear score:",
        "",
        "| SRS bin (dB) | n | accuracy |",
        "|---|---|---|",
    ]
    for b in reliability(recs):
        lines.append(
            f"| {10 * math.log10(b['ratio_lo']):+.1f} .. {10 * math.log10(b['ratio_hi']):+.1f} | {b['n']:.0f} | {b['accuracy']:.2f} |"
        )
    lines.append("")
    return lines


def _space_spearman(recs: list[ValidationRecord]) -> list[str]:
    """Spearman(score, xi_plus) rows for the validated selections' scores in every space and solver."""
    keys = [k for k in SPACE_NAMES if recs and all(k in r.scores for r in recs)]
    rows = []
    for key in keys:
        ratios = [r.scores[key] for r in recs]
        pos = [r for r in recs if r.scores[key] > 1.0]
        rows.append(
            f"| Spearman(score {SPACE_NAMES[key]}, xi_plus) | {spearman(ratios, [r.xi_plus for r in recs]):.3f} | "
            f"{spearman([r.scores[key] for r in pos], [r.xi_plus for r in pos]):.3f} (n={len(pos)}) | | |"
        )
    return rows


def _xi_plus_target(recs: list[ValidationRecord], ks: list[int]) -> str:
    """The target lines: reconstruct's mean xi_plus against the best validated paper strategy's, per k.

    The best paper strategy is picked after the fact (the largest of several noisy means), so
    the paired difference over the same queries, with its 95% t interval, says how much of a
    gap is noise. When strategies of our own estimators (grad_cos, tracin) were validated too,
    a second line restricts the comparison to the paper's gradient estimators.
    """
    paired = paired_xi_plus(recs, "reconstruct")
    outside = "" if {r.step for r in recs} <= {"mean"} else " (weighted step: outside the paper's protocol)"
    line = (
        f"Target{outside}: reconstruct's mean xi_plus above the best validated paper strategy's at every k: "
        + _beats_best(paired, ks)
    )
    paper = [p for p in paired if p.strategy.split(" ", 1)[0] in PAPER_GRADIENT_ESTIMATORS]
    if paper and len(paper) < len(paired):
        line += (
            f"\n\nThe same against the paper's own estimators ({', '.join(PAPER_GRADIENT_ESTIMATORS)}) only: "
            + _beats_best(paper, ks)
        )
    return line


def _beats_best(paired: list[PairedXiPlus], ks: list[int]) -> str:
    """``**True**`` when reconstruct's mean is above the best other strategy's at every k, with the pairs."""
    best_at: dict[int, PairedXiPlus] = {}
    for p in paired:  # per k, best mean first
        best_at.setdefault(p.k, p)
    parts, wins = [], []
    for k in ks:
        if k not in best_at:
            continue
        p = best_at[k]
        wins.append(p.reference_mean > p.mean)
        parts.append(
            f"k={k} {p.reference_mean:+.2e} vs {p.mean:+.2e} ({p.strategy}), "
            f"paired difference {p.difference:+.2e} (95% CI {p.lo:+.2e} .. {p.hi:+.2e}, n={p.n})"
        )
    return f"**{bool(wins) and all(wins)}** (" + "; ".join(parts) + ")"


def _products_note(result: GridResult) -> str:
    """How the full-space products were taken (`score_full_space`'s float32 check)."""
    moved = f"{result.checks.get('float32_max_abs_db', math.nan):.2g} dB"
    if result.checks.get("float64_products"):
        return (
            f"On the first query float32 products moved a score by {moved} from float64 ones, so every "
            "full-space product was taken in float64."
        )
    return (
        "The full-space products were taken in float32 (twice as fast); on the first query they moved "
        f"no score by more than {moved} from float64 products."
    )
