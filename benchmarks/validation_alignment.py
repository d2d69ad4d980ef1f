"""What does the fine-tuning validation reward: the score, or where the selection's plain mean points?

The paper's validation (paper.md section 5) takes one AdamW step on the selection's mean
loss; the score (SRS) measures how well the selection, mixed with its simplex weights,
reconstructs the test gradient. For held-out queries of a demo, at each k, this steps every
selection of several strategies and the five random selections, on the mean loss and on the
loss weighted by the selection's simplex weights (paper solver), and relates each step's
`xi_plus` (against the mean of the five random selections, stepped the same way) to three
properties of the selection, all on the index's projected gradients:

- the score's ratio (SRS);
- `cos_mean`: the cosine between the test gradient and the plain mean of the selected
  gradients, which is what a mean-loss step follows;
- `cos_mix`: the cosine between the test gradient and the simplex-weighted mixture, which is
  what a weighted step follows.

It prints Spearman correlations within a query (over that query's selections at one k,
averaged over queries and k) and pooled over everything, per step.

    .venv/bin/python benchmarks/validation_alignment.py --demo tweets --queries 24 --k 5,10,25
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from exemplar.explain import Explainer
from exemplar.options import ExplainOptions
from exemplar.research.demos import held_out_queries, prepare
from exemplar.research.evaluation import RANDOM_SEEDS, training_examples
from exemplar.research.step_effects import STEPS, StepValidator, spearman

STRATEGIES = {
    "reconstruct": ExplainOptions(strategy="reconstruct"),
    "cos top-k helpful": ExplainOptions(strategy="topk", estimator="grad_cos", ordering="most_helpful"),
    "cos aide": ExplainOptions(strategy="aide", estimator="grad_cos"),
    "cos FL lambda=0.25": ExplainOptions(strategy="balanced", estimator="grad_cos", lam=0.25),
    "dot top-k": ExplainOptions(strategy="topk", estimator="grad_dot"),
    "dot FL lambda=1": ExplainOptions(strategy="balanced", estimator="grad_dot"),
}
PROPERTIES = ("srs", "cos_mean", "cos_mix")


@dataclass
class Point:
    """One selection of one query at one k."""

    query: int
    k: int
    name: str
    srs: float
    cos_mean: float
    cos_mix: float
    delta: dict[str, float]  # step -> delta log p of the test instance
    xi: dict[str, float] = field(default_factory=dict)  # step -> xi_plus

    @property
    def random(self) -> bool:
        return self.name.startswith("random ")


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _value(p: Point, what: str) -> float:
    return p.xi[what[3:]] if what.startswith("xi_") else float(getattr(p, what))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", default="tweets")
    parser.add_argument("--root", type=Path, default=Path(".cache/demos"))
    parser.add_argument("--queries", type=int, default=24)
    parser.add_argument("--k", default="5,10,25", help="comma-separated k values")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    explainer = Explainer.from_index(prepare(args.demo, args.root))
    validator = StepValidator(explainer.featurizer)
    ks = [int(k) for k in args.k.split(",")]
    queries = held_out_queries(explainer.store.path, args.queries)
    groups: list[list[Point]] = []  # the selections of one query at one k
    for qi, query in enumerate(queries):
        print(f"query {qi + 1} of {len(queries)}", file=sys.stderr, flush=True)
        state = explainer.prepare(query)
        g = state.grad.astype(np.float64)
        for k in ks:
            selections = {
                f"random {s}": explainer.select(state, ExplainOptions(k=k, strategy="random", seed=s))[0]
                for s in range(RANDOM_SEEDS)
            }
            for name, options in STRATEGIES.items():
                selections[name] = explainer.select(state, replace(options, k=k))[0]
            found = []
            for name, rows in selections.items():
                relevance = explainer.score(state, rows)
                weights = relevance.weights.astype(np.float64)
                weights = weights / weights.sum()
                a = explainer.store.vectors_at(rows).astype(np.float64)  # (k, d)
                examples = training_examples(explainer, [int(r) for r in rows])
                delta = {
                    "mean": validator.effect(query, examples).delta_logp,
                    "weighted": validator.effect(query, examples, list(weights)).delta_logp,
                }
                found.append(
                    Point(qi, k, name, relevance.ratio, _cos(g, a.mean(axis=0)), _cos(g, a.T @ weights), delta)
                )
            for step in STEPS:
                base = float(np.mean([p.delta[step] for p in found if p.random]))
                for p in found:
                    p.xi[step] = p.delta[step] - base
            groups.append(found)
    points = [p for grp in groups for p in grp]
    print(
        f"{args.demo}: {len(queries)} queries, k = {args.k}, {len(points)} selections "
        f"({len(STRATEGIES)} strategies and {RANDOM_SEEDS} random per query and k); "
        "one AdamW step, lr 1e-5, xi_plus against the mean of the random selections stepped the same way"
    )
    print("Spearman(property, xi_plus): within a query and k (mean over them) / pooled over all selections")
    for step in STEPS:
        cells = []
        for prop in PROPERTIES:
            within = [spearman([_value(p, prop) for p in grp], [p.xi[step] for p in grp]) for grp in groups]
            pooled = spearman([_value(p, prop) for p in points], [p.xi[step] for p in points])
            cells.append(f"{prop} {np.nanmean(within):+.3f} / {pooled:+.3f}")
        print(f"  {step + ' step':<14} " + "   ".join(cells))
    print(
        "Means per strategy and k: SRS (mean of ratios, dB), cos_mean, cos_mix, xi_plus with the mean step, weighted step"
    )
    for k in ks:
        for name in ["random", *STRATEGIES]:
            sel = [p for p in points if p.k == k and (p.random if name == "random" else p.name == name)]
            srs_db = 10 * np.log10(np.mean([p.srs for p in sel]))
            means = "  ".join(
                f"{np.mean([_value(p, c) for p in sel]):+.4f}"
                for c in ("cos_mean", "cos_mix", "xi_mean", "xi_weighted")
            )
            print(f"  k={k:<3} {name:<20} {srs_db:+6.2f} dB  {means}")


if __name__ == "__main__":
    main()
