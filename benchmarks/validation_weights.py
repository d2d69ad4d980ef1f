"""Does the fine-tuning validation favour cosine top-k because it ignores the explanation's weights?

The paper's validation (paper.md section 5) takes one AdamW step on the mean loss of the
selection; the score measures the selection mixed with its simplex weights. For held-out
queries of a demo, at each k, this prints the mean `xi_plus` (against the same five random
selections) of `reconstruct` and of baselines (default: grad_cos top-k most helpful;
`--against` picks them, AIDE on grad_cos or datainf among them), each stepped on the mean
loss (the paper's protocol, as in the reports) and on the loss weighted by the selection's
own simplex weights (`StepValidator.effect(weights=)`), and the paired differences with
their 95% t intervals.

    .venv/bin/python benchmarks/validation_weights.py --demo tweets --queries 40 --k 5,10
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from exemplar.explain import Explainer
from exemplar.options import ExplainOptions
from exemplar.research.demos import held_out_queries, prepare
from exemplar.research.evaluation import RANDOM_SEEDS, training_examples
from exemplar.research.step_effects import StepValidator, paired_difference

STRATEGIES = {
    "reconstruct": ExplainOptions(strategy="reconstruct"),
    "cos top-k helpful": ExplainOptions(strategy="topk", estimator="grad_cos", ordering="most_helpful"),
    "cos aide": ExplainOptions(strategy="aide", estimator="grad_cos"),
    "datainf aide": ExplainOptions(strategy="aide", estimator="datainf"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", default="tweets")
    parser.add_argument("--root", type=Path, default=Path(".cache/demos"))
    parser.add_argument("--queries", type=int, default=40)
    parser.add_argument("--k", default="5,10", help="comma-separated k values")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--against",
        default="cos top-k helpful",
        help=f"comma-separated baselines stepped both ways beside reconstruct: {', '.join(list(STRATEGIES)[1:])}",
    )
    args = parser.parse_args()
    against = [a.strip() for a in args.against.split(",")]
    if unknown := [a for a in against if a not in STRATEGIES or a == "reconstruct"]:
        parser.error(f"unknown baseline {', '.join(unknown)}: choose among {', '.join(list(STRATEGIES)[1:])}")
    strategies = {name: STRATEGIES[name] for name in ["reconstruct", *against]}
    torch.set_num_threads(args.threads)
    explainer = Explainer.from_index(prepare(args.demo, args.root))
    validator = StepValidator(explainer.featurizer)
    ks = [int(k) for k in args.k.split(",")]
    xi: dict[tuple[int, str], list[float]] = {}
    queries = held_out_queries(explainer.store.path, args.queries)
    for qi, query in enumerate(queries):
        if qi % 10 == 0:
            print(f"query {qi + 1} of {len(queries)}", file=sys.stderr, flush=True)
        state = explainer.prepare(query)
        for k in ks:
            randoms = [
                explainer.select(state, ExplainOptions(k=k, strategy="random", seed=s))[0] for s in range(RANDOM_SEEDS)
            ]
            base = np.mean([validator.effect(query, training_examples(explainer, r)).delta_logp for r in randoms])
            for name, options in strategies.items():
                rows, _, _ = explainer.select(state, replace(options, k=k))
                weights = explainer.score(state, rows).weights.astype(np.float64)
                examples = training_examples(explainer, rows)
                uniform = validator.effect(query, examples).delta_logp
                weighted = validator.effect(query, examples, list(weights / weights.sum())).delta_logp
                xi.setdefault((k, f"{name}, mean loss"), []).append(uniform - base)
                xi.setdefault((k, f"{name}, weighted"), []).append(weighted - base)
    n = len(next(iter(xi.values())))
    print(f"{args.demo}: {n} queries; mean xi_plus (one AdamW step, lr 1e-5, against 5 random selections)")
    for k in ks:
        print(f"k={k}")
        for (kk, name), values in xi.items():
            if kk == k:
                print(f"  {name:<32} {np.mean(values):+.4f}")
        pairs = [("reconstruct, weighted", "reconstruct, mean loss")]
        for b in against:
            pairs += [
                ("reconstruct, mean loss", f"{b}, mean loss"),
                ("reconstruct, weighted", f"{b}, mean loss"),
                ("reconstruct, weighted", f"{b}, weighted"),
            ]
        for a, b in pairs:
            d, lo, hi = paired_difference(xi[(k, a)], xi[(k, b)])
            print(f"  {a} minus {b}: {d:+.4f} (95% CI {lo:+.4f} .. {hi:+.4f})")


if __name__ == "__main__":
    main()
