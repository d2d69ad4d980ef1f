"""The paper's evaluation grid: every estimator x strategy x k on held-out test queries.

`run_grid` computes, for each test query (one forward/backward each), the Selection
Relevance Score of every configured selection; `validate_selections` adds the fine-tuning
validation of paper.md section 5 for a subset of the scored selections (one AdamW step
each, against the five random selections the grid scored for the same k). Results are plain records; `exemplar.research.report` turns them into the
markdown report and plots.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from exemplar.errors import InvalidInputError
from exemplar.explain import Explainer, QueryState
from exemplar.fullspace import MAX_CHUNK_TOKENS, KroneckerGram
from exemplar.options import ExplainOptions
from exemplar.progress import Progress, SilentProgress
from exemplar.relevance import (
    best_single_ratio,
    mean_of_ratios_db,
    ratio_db,
    ratio_of_expectations_db,
    ratio_upper_bound,
)
from exemplar.research.step_effects import STEPS, StepEffect, StepValidator, ValidationRecord
from exemplar.strategies import COMPARED, ORDERINGS, STRATEGIES
from exemplar.tasks import Example

KS = (1, 5, 10, 25)
GRADIENT_ESTIMATORS = ("grad_dot", "grad_cos", "datainf", "tracin")
PAPER_GRADIENT_ESTIMATORS = ("grad_dot", "datainf")
"""The gradient estimators the paper used (paper.md section 3); grad_cos and tracin are ours."""
GRID_STRATEGIES = COMPARED
"""The strategies `default_configs` scores, so the ones the validation can take (the registry's
`compared` ones: single methods that work for any query)."""
INFLUENCE_STRATEGIES = tuple(name for name in GRID_STRATEGIES if STRATEGIES[name].uses_influence)
"""Grid strategies that select from an estimator's candidates: scored once per estimator."""
RANDOM_SEEDS = 5
SCORE_KEYS = ("projected/paper", "projected/exact", "full/paper", "full/exact")
"""Where and how `score_full_space` scores a selection: "space/solver". ``ScoreRecord.ratio`` is
always "projected/paper", the paper's function on the index's vectors."""
BOUND_MAX_ROWS = 20_000
"""Largest index for which `run_grid` computes the certified ceilings (a QP over all rows per query)."""


@dataclass(frozen=True)
class Config:
    """One selection configuration of the grid (estimator-independent ones use estimator "-")."""

    estimator: str
    strategy: str
    ordering: str = "most_influential"
    lam: float = 1.0

    @property
    def label(self) -> str:
        if self.strategy == "topk":
            return f"top-k {self.ordering.replace('_', ' ')}"
        if self.strategy == "balanced":
            suffix = "" if self.ordering == "most_influential" else f" ({self.ordering.replace('_', ' ')})"
            return f"FL lambda={self.lam:g}{suffix}"
        return self.strategy

    @property
    def validated_label(self) -> str:
        """The strategy name its validation records carry: the label, after the estimator when it has one."""
        return self.label if self.estimator == "-" else f"{self.estimator} {self.label}"


def parse_config(spec: str, estimator: str) -> Config:
    """A grid configuration from ``STRATEGY[:ORDERING][:LAMBDA]`` (``topk:most_helpful``,
    ``balanced:0.25``, ``reconstruct``); ``estimator`` for the influence-based strategies."""
    strategy, *parts = spec.strip().split(":")
    if strategy not in GRID_STRATEGIES:
        raise InvalidInputError(f"cannot validate {strategy}: choose among {', '.join(GRID_STRATEGIES)}")
    ordering, lam = "most_influential", 1.0
    for part in parts:
        if part in ORDERINGS and strategy in ("topk", "balanced"):
            ordering = part
            continue
        try:
            lam = float(part)
        except ValueError:
            lam = math.nan
        if strategy != "balanced" or not 0.0 <= lam <= 1.0:
            raise InvalidInputError(
                f"cannot read {part!r} in {spec!r}: topk and balanced take an ordering "
                f"({', '.join(ORDERINGS)}), balanced also a lambda in [0, 1]"
            )
    return Config(estimator if strategy in INFLUENCE_STRATEGIES else "-", strategy, ordering, lam)


def check_step(step: str) -> None:
    """Raise unless ``step`` is a validation step (``STEPS``)."""
    if step not in STEPS:
        raise InvalidInputError(f"unknown validation step {step!r}; choose one of: {', '.join(STEPS)}")


def default_configs(estimators: Sequence[str], signed: dict[str, bool]) -> list[Config]:
    """The paper's grid (section 4) plus ours; helpful/harmful only for signed estimators."""
    configs = [Config("-", name) for name in GRID_STRATEGIES if name not in INFLUENCE_STRATEGIES]
    for est in estimators:
        orderings = ["most_influential", "least_influential"] + (
            ["most_helpful", "most_harmful"] if signed[est] else []
        )
        configs += [Config(est, "topk", o) for o in orderings]
        configs += [Config(est, "balanced", "most_influential", lam) for lam in (0.25, 0.5, 0.75, 1.0)]
        configs += [Config(est, "balanced", o, 1.0) for o in orderings if o != "most_influential"]
        configs += [Config(est, name) for name in INFLUENCE_STRATEGIES if name not in ("topk", "balanced")]
    return configs


@dataclass
class ScoreRecord:
    """The score of one selection for one query."""

    query: int
    config: Config
    k: int
    ratio: float
    db: float
    var_g: float
    var_r: float
    rows: list[int]
    scores: dict[str, float] = field(default_factory=dict)  # SCORE_KEYS -> ratio, after `score_full_space`


@dataclass
class BoundRecord:
    """Certified ceilings for one query over the whole index: no selection method can beat them."""

    query: int
    best_single: float  # exact best ratio of one example: the k = 1 optimum (relevance.best_single_ratio)
    any_selection: float  # upper bound on the ratio of any selection, any k (relevance.ratio_upper_bound)


@dataclass
class GridResult:
    records: list[ScoreRecord] = field(default_factory=list)
    bounds: list[BoundRecord] = field(default_factory=list)
    validation: list[ValidationRecord] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    n_queries: int = 0
    checks: dict[str, float] = field(default_factory=dict)  # self-checks of the run (score_full_space)

    def table(self) -> dict[tuple[str, str, int], dict[str, float]]:
        """(estimator, config label, k) -> mean-of-ratios dB, ratio-of-expectations dB, share > 0 dB, n,
        and the median over queries of each query's dB (random: its seeds' mean ratio first)."""
        groups: dict[tuple[str, str, int], list[ScoreRecord]] = defaultdict(list)
        for r in self.records:
            groups[(r.config.estimator, r.config.label, r.k)].append(r)
        out = {}
        for key, recs in groups.items():
            out[key] = {
                "mean_of_ratios_db": mean_of_ratios_db([r.ratio for r in recs]),
                "ratio_of_expectations_db": ratio_of_expectations_db([r.var_g for r in recs], [r.var_r for r in recs]),
                "median_db": median_per_query_db([(r.query, r.ratio) for r in recs]),
                "share_positive": float(np.mean([r.db > 0 for r in recs])),
                "n": float(len(recs)),
            }
        return out

    def spaces(self) -> list[str]:
        """The SCORE_KEYS the records carry (none before `score_full_space`)."""
        return [key for key in SCORE_KEYS if any(key in r.scores for r in self.records)]

    def space_table(self) -> dict[tuple[str, str, int, str], dict[str, float]]:
        """(estimator, config label, k, score key) -> mean-of-ratios dB, median per query dB and the
        number of queries scored there."""
        groups: dict[tuple[str, str, int, str], list[tuple[int, float]]] = defaultdict(list)
        for r in self.records:
            for key, ratio in r.scores.items():
                groups[(r.config.estimator, r.config.label, r.k, key)].append((r.query, ratio))
        return {
            key: {
                "mean_of_ratios_db": mean_of_ratios_db([ratio for _, ratio in pairs]),
                "median_db": median_per_query_db(pairs),
                "n_queries": float(len({query for query, _ in pairs})),
            }
            for key, pairs in groups.items()
        }

    def bound_db(self, kind: str) -> float:
        """Mean-of-ratios dB of a per-query ceiling ("best_single" or "any_selection"); NaN without bounds.

        Each query's ceiling is at least the ratio of any selection for it, so their mean of
        ratios is at least any strategy's mean of ratios: a ceiling on every table cell.
        """
        if not self.bounds:
            return math.nan
        return mean_of_ratios_db([getattr(b, kind) for b in self.bounds])


def median_per_query_db(pairs: Sequence[tuple[int, float]]) -> float:
    """The median over queries of each query's score in dB, from (query, ratio) pairs; a query with
    several (random's seeds) counts once, at the mean of its ratios. Unlike the mean of ratios, a
    few queries with a near-duplicate training example (ratios in the thousands) cannot carry it."""
    by_query: dict[int, list[float]] = defaultdict(list)
    for query, ratio in pairs:
        by_query[query].append(ratio)
    if not by_query:
        return math.nan
    return float(np.median([mean_of_ratios_db(ratios) for ratios in by_query.values()]))


def _select(explainer: Explainer, state: QueryState, config: Config, k: int, seed: int = 0) -> np.ndarray:
    options = ExplainOptions(
        k=k,
        strategy=config.strategy,
        lam=config.lam,
        seed=seed,
        ordering=config.ordering,
        estimator="grad_dot" if config.estimator == "-" else config.estimator,
    )
    rows, _, _ = explainer.select(state, options)
    return rows


def run_grid(
    explainer: Explainer,
    queries: Sequence[Example],
    *,
    estimators: Sequence[str] = ("grad_dot", "grad_cos", "datainf", "bm25"),
    ks: Sequence[int] = KS,
    validate_configs: Sequence[Config] = (),
    validate_ks: Sequence[int] = KS,
    bounds: bool = True,
    validation_step: str = "mean",
    progress: Progress | None = None,
) -> GridResult:
    """Score every configuration for every query; validate `validate_configs` by fine-tuning.

    With ``bounds`` each query also gets its certified ceilings over the whole index
    (``BoundRecord``), so the report can tell a missed target from an unreachable one; they
    need every vector in memory and a QP over all rows, so indexes above ``BOUND_MAX_ROWS``
    rows skip them. The validation (`validate_selections`) runs after the grid, on the
    selections it scored, stepping each on ``validation_step`` (``STEPS``).
    `score_full_space` adds scores in the model's own space.
    """
    progress = progress or SilentProgress()
    if not queries:
        raise InvalidInputError("no test queries to evaluate")
    if validate_configs:  # every validated k must be scored too
        check_step(validation_step)
        ks = sorted({*ks, *validate_ks})
    signed = {e: explainer.estimators.get(e).signed for e in estimators}
    configs = default_configs(estimators, signed)
    unscored = [c for c in validate_configs if c not in configs]
    if unscored:  # found before the grid runs, not after
        raise InvalidInputError(
            f"the grid does not score {', '.join(c.label for c in unscored)}: balanced takes a lambda other "
            "than 1 only with the most_influential ordering, helpful/harmful orderings need a signed estimator"
        )
    result = GridResult(n_queries=len(queries))
    seconds: dict[str, float] = defaultdict(float)
    bounded = bounds and explainer.store.n <= BOUND_MAX_ROWS
    vectors = explainer.store.vectors_at(np.arange(explainer.store.n)) if bounded else None  # (n, d)
    progress.start("evaluation grid", len(queries), unit="query")
    for qi, query in enumerate(queries):
        t0 = time.perf_counter()
        state = explainer.prepare(query)
        seconds["gradient"] += time.perf_counter() - t0
        if vectors is not None:
            t0 = time.perf_counter()
            result.bounds.append(
                BoundRecord(qi, best_single_ratio(state.grad, vectors), ratio_upper_bound(state.grad, vectors))
            )
            seconds["bounds"] += time.perf_counter() - t0
        for config in configs:
            for k in ks:
                t1 = time.perf_counter()
                seeds = range(RANDOM_SEEDS) if config.strategy == "random" else (0,)
                for seed in seeds:
                    rows = _select(explainer, state, config, k, seed)
                    rel = explainer.score(state, rows)
                    result.records.append(
                        ScoreRecord(qi, config, k, rel.ratio, rel.db, rel.var_g, rel.var_r, [int(r) for r in rows])
                    )
                seconds[config.strategy] += time.perf_counter() - t1
        progress.advance(1)
    progress.finish()
    result.seconds = dict(seconds)
    if validate_configs:
        t2 = time.perf_counter()
        result.validation = validate_selections(
            explainer,
            queries,
            result,
            dict.fromkeys(validate_ks, validate_configs),
            step=validation_step,
            progress=progress,
        )
        result.seconds["validation"] = time.perf_counter() - t2
    return result


GRID_FACTOR_BYTES = 6 * 1024**3
"""Memory for one group's layer inputs and output gradients in the grid's full-space pass: the
tokens of a group are capped so that their factors (float32, plus float64 copies) fit it."""
GRID_DENSE_ELEMENTS = 1 << 28
"""Per-layer dense gradients of one group held at once in the grid's full-space pass (2 GiB float64)."""
FLOAT32_MAX_DB = 0.05
"""Largest change float32 products may make to a first-query score (dB) before the pass takes float64."""


def grid_gram_computer(explainer: Explainer, dtype: torch.dtype) -> KroneckerGram:
    """The full-space Gram computer of the grid: the served one's model, products in ``dtype``,
    with groups as large as `GRID_FACTOR_BYTES` allows (so one query's selections share few passes)."""
    served = explainer.full
    per_token = 12 * sum(d_in + d_out for d_in, d_out in served.shapes)  # float32 factors + float64 copies
    return KroneckerGram(
        served.model,
        served.task,
        served.layers,
        batches=served.batches,
        max_chunk_tokens=max(MAX_CHUNK_TOKENS, GRID_FACTOR_BYTES // per_token),
        dense_max_elements=GRID_DENSE_ELEMENTS,
        dtype=dtype,
    )


def full_space_configs(estimators: Sequence[str]) -> list[Config]:
    """The paper's strategies on the paper's gradient estimators, random and reconstruct: what the
    reproduction scores in the full space for every query (a full-space Gram costs far more than
    a projected one, so the rest of the grid is scored there only where it is validated)."""
    configs = [Config("-", "random"), Config("-", "reconstruct")]
    for est in [e for e in estimators if e in PAPER_GRADIENT_ESTIMATORS]:
        configs += [Config(est, "topk"), Config(est, "balanced"), Config(est, "divine"), Config(est, "aide")]
    return configs


def score_full_space(
    explainer: Explainer,
    queries: Sequence[Example],
    result: GridResult,
    configs: Sequence[Collection[Config]],
    *,
    random_seeds: int = RANDOM_SEEDS,
    progress: Progress | None = None,
) -> None:
    """Score the grid's selections of ``configs[q]`` for query ``q`` (every k, every random seed) in
    the model's own space too, filling ``ScoreRecord.scores`` (SCORE_KEYS): the full gradients with
    both solvers, and the projection with the exact solver.

    Per query, one forward/backward of its selections' examples in as few groups as memory allows
    (`grid_gram_computer`, `Explainer.full_grams`: only each selection's own pairs are multiplied).
    The products are float32, twice as fast; for the first query they are also taken in float64
    and the largest difference in dB is kept in ``result.checks["float32_max_abs_db"]``; above
    `FLOAT32_MAX_DB` (pinv's truncation decided by rounding) the whole pass is float64. Random
    selections are scored for their first ``random_seeds`` seeds only (they are nearly disjoint,
    so on a large model they are most of the forward/backward passes).
    """
    progress = progress or SilentProgress()
    fast = grid_gram_computer(explainer, torch.float32)
    progress.start("full-space scores", len(configs), unit="query")
    t0 = time.perf_counter()
    for qi, wanted in enumerate(configs):
        seen: dict[tuple[Config, int], int] = defaultdict(int)
        records = []
        for r in result.records:
            if r.query == qi and r.config in wanted and seen[(r.config, r.k)] < random_seeds:
                seen[(r.config, r.k)] += 1
                records.append(r)
        if not records:
            progress.advance(1)
            continue
        state = explainer.prepare(queries[qi], keep_factors=True)
        rows = [np.asarray(r.rows, dtype=np.int64) for r in records]
        grams = explainer.full_grams(state, rows, computer=fast, group_rows=explainer.store.n)
        for r, gram in zip(records, grams, strict=True):
            projected = explainer.score(state, np.asarray(r.rows), solver="exact").ratio
            r.scores = {"projected/paper": r.ratio, "projected/exact": projected}
            r.scores.update({f"full/{solver}": gram.relevance(solver).ratio for solver in ("paper", "exact")})
        if qi == 0:
            precise = grid_gram_computer(explainer, torch.float64)
            exact = explainer.full_grams(state, rows, computer=precise, group_rows=explainer.store.n)
            result.checks["float32_max_abs_db"] = max(
                abs(g.relevance(solver).db - ratio_db(r.scores[f"full/{solver}"]))
                for r, g in zip(records, exact, strict=True)
                for solver in ("paper", "exact")
            )
            if result.checks["float32_max_abs_db"] > FLOAT32_MAX_DB:  # float32 is not good enough here
                fast, result.checks["float64_products"] = precise, 1.0
                for r, g in zip(records, exact, strict=True):
                    r.scores.update({f"full/{solver}": g.relevance(solver).ratio for solver in ("paper", "exact")})
        progress.advance(1)
    progress.finish()
    result.seconds["full_space"] = result.seconds.get("full_space", 0.0) + time.perf_counter() - t0


def best_paper_config(result: GridResult, estimator: str, k: int) -> Config | None:
    """The paper's strategy (any ordering / lambda, random excluded) with the best mean-of-ratios dB.

    Over every query of ``result`` for this estimator and k; None when the grid has none.
    It is the report's "best paper strategy" unless that is random (the validation's
    baseline), so the validation can check the xi_plus target against the strongest
    baseline by score.
    """
    ratios: dict[Config, list[float]] = defaultdict(list)
    for r in result.records:
        if r.k == k and r.config.estimator == estimator:
            ratios[r.config].append(r.ratio)
    if not ratios:
        return None
    return max(ratios, key=lambda c: mean_of_ratios_db(ratios[c]))


def training_examples(explainer: Explainer, rows: Sequence[int]) -> list[Example]:
    """The stored training examples at ``rows``, as examples a fine-tuning step can train on."""
    return [e.to_example() for e in explainer.store.examples_at(list(rows))]


def _step(
    explainer: Explainer, validator: StepValidator, target: Example, rows: Sequence[int], weighted_by: QueryState | None
) -> StepEffect:
    """One AdamW step on the training examples at ``rows``: on their mean loss, or, given the
    query's state, on their losses weighted by the selection's simplex weights (paper's solver)."""
    weights = None
    if weighted_by is not None:
        w = explainer.score(weighted_by, np.asarray(rows)).weights.astype(np.float64)
        weights = list(w / w.sum())
    return validator.effect(target, training_examples(explainer, rows), weights)


def validate_selections(
    explainer: Explainer,
    queries: Sequence[Example],
    result: GridResult,
    configs_at: Mapping[int, Sequence[Config]],
    *,
    step: str = "mean",
    progress: Progress | None = None,
) -> list[ValidationRecord]:
    """Fine-tune on the selections the grid scored (paper.md section 5) for ``queries``.

    ``queries`` are the first queries of ``result`` (query index = position); for each, and
    each k of ``configs_at``, the five random selections the grid scored give the
    baseline, and every configuration in ``configs_at[k]`` gets one AdamW step on its
    selection. A configuration the grid did not score is an error, not a silent gap.
    ``step="weighted"`` (beyond the paper) weighs every selection's losses, the random
    baselines' included, by its simplex weights under the paper's solver, the weights the
    service returns; ``"mean"`` is the paper's protocol.
    """
    check_step(step)
    progress = progress or SilentProgress()
    scored: dict[tuple[int, Config, int], ScoreRecord] = {}
    for r in result.records:
        scored.setdefault((r.query, r.config, r.k), r)  # random: its first seed
    randoms: dict[tuple[int, int], list[list[int]]] = defaultdict(list)
    for r in result.records:
        if r.config.strategy == "random":
            randoms[(r.query, r.k)].append(r.rows)
    validator = StepValidator(explainer.featurizer)
    out = []
    progress.start("fine-tuning validation", len(queries), unit="query")
    for qi, query in enumerate(queries):
        # the explained target: a classifier query is validated on the label that was explained
        target = query
        unlabelled = query.text is not None and query.label is None
        state = explainer.prepare(query) if step == "weighted" or unlabelled else None
        if state is not None and unlabelled:
            target = replace(query, label=state.prediction["explained_label"])
        weighted_by = state if step == "weighted" else None
        for k, configs in sorted(configs_at.items()):
            missing = [c.label for c in configs if (qi, c, k) not in scored]
            if missing or not randoms[(qi, k)]:
                raise InvalidInputError(
                    f"the grid did not score {', '.join(missing) or 'random'} at k={k} for query {qi}; "
                    f"validate strategies of the grid ({', '.join(GRID_STRATEGIES)})"
                )
            baselines = [_step(explainer, validator, target, rows, weighted_by) for rows in randoms[(qi, k)]]
            base_logp = float(np.mean([b.delta_logp for b in baselines]))
            base_jsd = float(np.mean([b.jsd for b in baselines]))
            for config in configs:
                rec = scored[(qi, config, k)]
                stepped = _step(explainer, validator, target, rec.rows, weighted_by)
                out.append(
                    ValidationRecord(
                        qi,
                        config.validated_label,
                        k,
                        rec.ratio,
                        rec.db,
                        stepped.delta_logp - base_logp,
                        stepped.jsd / base_jsd if base_jsd > 0 else math.nan,
                        step,
                        dict(rec.scores),
                    )
                )
        progress.advance(1)
    progress.finish()
    return out
