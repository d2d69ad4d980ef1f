"""The evaluation grid, the fine-tuning validation and the report, on tiny real indexes."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from exemplar.errors import InvalidInputError
from exemplar.explain import Explainer
from exemplar.research.evaluation import (
    GRID_STRATEGIES,
    RANDOM_SEEDS,
    Config,
    best_paper_config,
    default_configs,
    parse_config,
    run_grid,
    training_examples,
    validate_selections,
)
from exemplar.research.report import write_report
from exemplar.research.step_effects import (
    StepValidator,
    ValidationRecord,
    jensen_shannon,
    paired_difference,
    paired_xi_plus,
    reliability,
    spearman,
)
from exemplar.tasks import Example
from tests.conftest import write_jsonl

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def clf(classifier_index: Path) -> Explainer:
    return Explainer.from_index(classifier_index)


def test_one_step_changes_only_a_copy(clf: Explainer) -> None:
    validator = StepValidator(clf.featurizer, lr=1e-2)
    before = [p.detach().clone() for p in validator.params]
    test = Example(text="the cat sat", label="positive")
    selection = [Example(text="the cat sat on the mat", label="positive")] * 3
    effect = validator.effect(test, selection)
    assert effect.delta_logp > 0  # training on (almost) the test instance raises its likelihood
    assert effect.jsd > 0
    for p, b in zip(validator.params, before, strict=True):
        assert torch.equal(p, b)
        assert p.grad is None


def test_weighted_step(clf: Explainer) -> None:
    validator = StepValidator(clf.featurizer, lr=1e-2)
    test = Example(text="the cat sat", label="positive")
    a, b = Example(text="the cat sat on the mat", label="positive"), Example(text="stocks fell", label="negative")
    assert validator.effect(test, [a, b], [0.5, 0.5]) == pytest.approx(validator.effect(test, [a, b]))
    assert validator.effect(test, [a, b], [1.0, 0.0]) == pytest.approx(validator.effect(test, [a]))
    assert validator.effect(test, [a, b], [1.0, 0.0]) != pytest.approx(validator.effect(test, [a, b]))
    for bad in ([1.0], [0.7, 0.7], [1.5, -0.5]):
        with pytest.raises(ValueError, match="one non-negative number per selected example"):
            validator.effect(test, [a, b], bad)


def test_cached_unstepped_answer_matches_a_fresh_validator(clf: Explainer) -> None:
    # the validator reuses the unstepped model's answer to a test instance across its selections
    test, other = Example(text="the cat sat", label="positive"), Example(text="stocks fell", label="negative")
    a, b = Example(text="the cat sat on the mat", label="positive"), Example(text="stocks fell", label="negative")
    warm = StepValidator(clf.featurizer, lr=1e-2)
    seen = [warm.effect(test, [a]), warm.effect(other, [a]), warm.effect(test, [b]), warm.effect(test, [a, b])]
    fresh = [
        StepValidator(clf.featurizer, lr=1e-2).effect(t, s)
        for t, s in [(test, [a]), (other, [a]), (test, [b]), (test, [a, b])]
    ]
    assert seen == fresh
    assert seen[0] != seen[2]


def test_paired_difference_matches_the_paired_t_test() -> None:
    from scipy.stats import ttest_rel

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=12), rng.normal(size=12)
    mean, lo, hi = paired_difference(a, b)
    ci = ttest_rel(a, b).confidence_interval(0.95)
    assert mean == pytest.approx(float(np.mean(a - b)))
    assert (lo, hi) == pytest.approx((ci.low, ci.high))
    assert math.isnan(paired_difference([1.0], [0.0])[1])


def test_paired_xi_plus_pairs_each_strategy_with_the_reference_per_k() -> None:
    rng = np.random.default_rng(1)
    xi = {(s, k, q): float(rng.normal()) for s in ("ours", "a", "b") for k in (1, 5) for q in range(6)}
    del xi[("a", 5, 0)]  # "a" not validated on query 0 at k=5: that query drops from the pair
    recs = [ValidationRecord(q, s, k, 1.0, 0.0, x, 1.0) for (s, k, q), x in xi.items()]
    got = paired_xi_plus(recs, "ours")
    assert [(p.k, p.strategy) for p in got] == sorted(
        [(k, s) for k in (1, 5) for s in ("a", "b")],
        key=lambda ks: (ks[0], -np.mean([x for (s, k, _), x in xi.items() if (s, k) == (ks[1], ks[0])])),
    )
    for p in got:
        queries = [q for q in range(6) if (p.strategy, p.k, q) in xi]
        ours = [xi[("ours", p.k, q)] for q in queries]
        theirs = [xi[(p.strategy, p.k, q)] for q in queries]
        assert p.n == len(queries) == (5 if (p.strategy, p.k) == ("a", 5) else 6)
        assert p.reference_mean == pytest.approx(np.mean(ours))
        assert p.mean == pytest.approx(np.mean(theirs))
        assert (p.difference, p.lo, p.hi) == pytest.approx(paired_difference(ours, theirs))
    assert paired_xi_plus(recs, "missing") == []


def test_jsd_and_statistics() -> None:
    p = torch.log_softmax(torch.tensor([[1.0, 2.0, 3.0]]), -1)
    assert jensen_shannon(p, p) == pytest.approx(0.0, abs=1e-7)
    q = torch.log(torch.tensor([[1.0, 1e-12, 1e-12]]))
    assert 0 < jensen_shannon(p, q) <= math.log(2) + 1e-6
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert math.isnan(spearman([1, 2], [1, 2]))


def test_grid_validation_and_report(clf: Explainer, tmp_path: Path) -> None:
    queries = [Example(text=t) for t in ("the cat sat", "stocks fell", "i love this movie", "free prize now")]
    configs = [Config("-", "reconstruct"), Config("grad_dot", "topk"), Config("grad_dot", "balanced")]
    result = run_grid(clf, queries, ks=(1, 5), validate_configs=configs, validate_ks=(5,))
    table = result.table()
    assert ("grad_dot", "top-k most influential", 5) in table
    assert ("bm25", "top-k most influential", 1) in table
    assert ("bm25", "top-k most helpful", 1) not in table  # unsigned: no helpful ordering
    # the aggregate is the paper's mean of linear ratios
    recs = [r for r in result.records if r.config == Config("grad_dot", "topk") and r.k == 5]
    assert len(recs) == 4
    expected = 10 * math.log10(np.mean([r.ratio for r in recs]))
    assert table[("grad_dot", "top-k most influential", 5)]["mean_of_ratios_db"] == pytest.approx(expected)
    assert len([r for r in result.records if r.config.strategy == "random" and r.k == 1]) == 4 * 5
    assert len(result.validation) == 4 * len(configs)
    assert all(np.isfinite(v.xi_plus) for v in result.validation)
    assert reliability(result.validation) or all(v.srs_ratio <= 0 for v in result.validation)
    path = write_report(result, tmp_path, demo="tiny", command="test", index_summary=clf.store.manifest.summary())
    text = path.read_text()
    assert "Spearman(SRS, xi_plus)" in text
    assert "| reconstruct (estimator-independent) |" in text
    # certified ceilings: every query's ceiling is at least every selection's score for it
    assert [b.query for b in result.bounds] == list(range(4))
    for b in result.bounds:
        assert b.best_single <= b.any_selection * (1 + 1e-9)
        scores = [r.ratio for r in result.records if r.query == b.query]
        assert max(r.ratio for r in result.records if r.query == b.query and r.k == 1) <= b.best_single * (1 + 1e-6)
        assert max(scores) <= b.any_selection * (1 + 1e-6)
    assert "Certified ceilings over the whole index" in text
    for png in ("tiny_db_by_k.png", "tiny_gain.png", "tiny_validation.png"):
        assert (tmp_path / png).stat().st_size > 1000


def test_best_paper_strategies_are_validated_per_k(clf: Explainer, tmp_path: Path) -> None:
    queries = [Example(text=t) for t in ("the cat sat", "stocks fell", "free prize now")]
    result = run_grid(clf, queries, estimators=("grad_dot", "grad_cos"), ks=(1, 2), bounds=False)
    table = result.table()
    for est in ("grad_dot", "grad_cos"):
        for k in (1, 2):
            best = best_paper_config(result, est, k)
            assert best is not None
            assert best.estimator == est
            paper = [v["mean_of_ratios_db"] for (e, label, kk), v in table.items() if e == est and kk == k]
            assert table[(est, best.label, k)]["mean_of_ratios_db"] == max(paper)
    assert best_paper_config(result, "datainf", 1) is None
    reconstruct = Config("-", "reconstruct")
    best2 = best_paper_config(result, "grad_cos", 2)
    paper2 = best_paper_config(result, "grad_dot", 2)
    assert best2 is not None
    assert paper2 is not None
    configs_at = {1: [reconstruct], 2: [reconstruct, best2, paper2]}
    recs = validate_selections(clf, queries[:2], result, configs_at)
    assert [(r.query, r.k, r.strategy) for r in recs] == [
        (q, k, s)
        for q in (0, 1)
        for k, s in (
            (1, "reconstruct"),
            (2, "reconstruct"),
            (2, f"grad_cos {best2.label}"),
            (2, f"grad_dot {paper2.label}"),
        )
    ]
    scored = {(r.query, r.config, r.k): r.ratio for r in result.records}
    assert recs[2].srs_ratio == scored[(0, best2, 2)]
    assert recs[0].srs_ratio == scored[(0, reconstruct, 1)]
    result.validation = recs
    text = write_report(result, tmp_path, demo="tiny", command="test", index_summary={}).read_text()
    assert f"| grad_cos {best2.label} | - | " in text  # validated at k=2 only
    assert "Target: reconstruct's mean xi_plus above the best validated paper strategy's at every k" in text
    assert "paired difference" in text
    assert "n=2)" in text
    # a second target line leaves out our own estimators: only grad_dot's strategy is compared there
    (paper_line,) = [line for line in text.splitlines() if line.startswith("The same against the paper's own")]
    assert f"(grad_dot {paper2.label})" in paper_line
    assert "grad_cos" not in paper_line.split(":", 1)[1]
    ours = {r.query: r.xi_plus for r in recs if r.k == 2 and r.strategy == "reconstruct"}
    theirs = {r.query: r.xi_plus for r in recs if r.k == 2 and r.strategy == f"grad_dot {paper2.label}"}
    diff = np.mean([ours[q] - theirs[q] for q in (0, 1)])
    assert f"paired difference {diff:+.2e}" in paper_line
    assert f"**{np.mean(list(ours.values())) > np.mean(list(theirs.values()))}**" in paper_line
    with pytest.raises(InvalidInputError, match="did not score top-k most influential at k=3"):
        validate_selections(clf, queries[:1], result, {3: [Config("grad_dot", "topk")]})
    with pytest.raises(InvalidInputError, match="did not score self"):
        validate_selections(clf, queries[:1], result, {1: [Config("grad_dot", "self")]})


def test_weighted_validation_steps_every_selection_on_its_simplex_weights(clf: Explainer, tmp_path: Path) -> None:
    queries = [Example(text="the cat sat", label="neutral"), Example(text="stocks fell")]
    result = run_grid(clf, queries, estimators=("grad_dot",), ks=(3,), bounds=False)
    configs_at = {3: [Config("-", "reconstruct"), Config("grad_dot", "topk")]}
    recs = validate_selections(clf, queries, result, configs_at, step="weighted")
    mean = validate_selections(clf, queries, result, configs_at)
    assert {r.step for r in recs} == {"weighted"}
    assert {r.step for r in mean} == {"mean"}
    # oracle: the same steps by hand, each selection (random ones too) on its own score weights
    validator = StepValidator(clf.featurizer)
    labels = {"reconstruct": configs_at[3][0], "grad_dot top-k most influential": configs_at[3][1]}
    for r in recs:
        state = clf.prepare(queries[r.query])
        target = Example(text=queries[r.query].text, label=state.prediction["explained_label"])
        deltas = {}
        for x in result.records:
            if x.query == r.query and (x.config.strategy == "random" or x.config == labels[r.strategy]):
                w = clf.score(state, np.asarray(x.rows)).weights.astype(np.float64)
                step = validator.effect(target, training_examples(clf, x.rows), list(w / w.sum()))
                deltas.setdefault(x.config.strategy, []).append(step.delta_logp)
        assert len(deltas["random"]) == RANDOM_SEEDS
        (ours,) = deltas[labels[r.strategy].strategy]
        assert r.xi_plus == pytest.approx(ours - np.mean(deltas["random"]), rel=1e-6, abs=1e-9)
    # the weights change the step: the two protocols do not give the same numbers
    assert [r.xi_plus for r in recs] != pytest.approx([r.xi_plus for r in mean], rel=1e-6, abs=1e-12)
    result.validation = recs
    text = write_report(result, tmp_path, demo="tiny", command="test", index_summary={}).read_text()
    assert "weighted by the selection's simplex weights" in text
    assert "Target (weighted step: outside the paper's protocol):" in text
    with pytest.raises(InvalidInputError, match="unknown validation step 'sum'; choose one of: mean, weighted"):
        validate_selections(clf, queries, result, configs_at, step="sum")
    with pytest.raises(InvalidInputError, match="unknown validation step"):
        run_grid(clf, queries, ks=(1,), validate_configs=[Config("-", "reconstruct")], validation_step="sum")
    with pytest.raises(InvalidInputError, match=r"the grid does not score FL lambda=0.25 \(most helpful\)"):
        run_grid(clf, queries, ks=(1,), validate_configs=[parse_config("balanced:0.25:most_helpful", "grad_dot")])
    with pytest.raises(InvalidInputError, match="the grid does not score top-k most helpful"):
        run_grid(clf, queries, estimators=("bm25",), validate_configs=[parse_config("topk:most_helpful", "bm25")])


def test_parse_config_reads_strategy_ordering_and_lambda() -> None:
    assert parse_config("reconstruct", "grad_cos") == Config("-", "reconstruct")
    assert parse_config("topk:most_helpful", "grad_cos") == Config("grad_cos", "topk", "most_helpful")
    assert parse_config(" balanced:0.25", "datainf") == Config("datainf", "balanced", "most_influential", 0.25)
    assert parse_config("balanced:most_harmful:1", "grad_dot") == Config("grad_dot", "balanced", "most_harmful", 1.0)
    assert parse_config("aide", "grad_dot") == Config("grad_dot", "aide")
    with pytest.raises(InvalidInputError, match="cannot validate self: choose among " + ", ".join(GRID_STRATEGIES)):
        parse_config("self", "grad_dot")
    for bad in ("topk:0.5", "balanced:2", "balanced:most_useful", "reconstruct:most_helpful", "aide:0.5"):
        with pytest.raises(InvalidInputError, match="topk and balanced take an ordering"):
            parse_config(bad, "grad_dot")


def test_grid_strategies_are_the_ones_the_grid_scores() -> None:
    configs = default_configs(["grad_dot", "bm25"], {"grad_dot": True, "bm25": False})
    assert {c.strategy for c in configs} == set(GRID_STRATEGIES)


def test_ceilings_are_skipped_above_the_row_limit(clf: Explainer, monkeypatch: pytest.MonkeyPatch) -> None:
    import exemplar.research.evaluation as evaluation

    monkeypatch.setattr(evaluation, "BOUND_MAX_ROWS", clf.store.n - 1)
    result = run_grid(clf, [Example(text="the cat sat")], estimators=("grad_dot",), ks=(1,))
    assert result.bounds == []
    assert math.isnan(result.bound_db("any_selection"))


def _validate(index: Path, queries: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cli = Path(sys.executable).parent / "exemplar-eval"
    return subprocess.run(
        [cli, "validate", "--index", str(index), "--queries", str(queries), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_validate_cli(classifier_index: Path, tmp_path: Path) -> None:
    queries = write_jsonl(
        tmp_path / "q.jsonl",
        [
            {"text": "the cat sat", "label": "neutral"},
            {"text": "stocks fell", "label": "negative"},
            {"text": "what a day", "label": "positive"},
        ],
    )
    out = tmp_path / "v.json"
    run = _validate(classifier_index, queries, "--k", "2", "--out", str(out))
    assert run.returncode == 0, run.stderr
    assert "validated selections over 3 test instances" in run.stdout
    assert len(json.loads(out.read_text())) == 3 * 3
    bad = _validate(tmp_path, queries)
    assert bad.returncode == 2
    assert "not an index" in bad.stderr
    unknown = _validate(classifier_index, queries, "--strategies", "topk,self")
    assert unknown.returncode == 2
    assert "cannot validate self: choose among " + ", ".join(GRID_STRATEGIES) in unknown.stderr
    spec = _validate(classifier_index, queries, "--strategies", "topk:0.5")
    assert spec.returncode == 2
    assert "cannot read '0.5' in 'topk:0.5'" in spec.stderr
    step = _validate(classifier_index, queries, "--step", "sum")
    assert step.returncode == 2
    assert "unknown validation step 'sum'; choose one of: mean, weighted" in step.stderr
    weighted = _validate(
        classifier_index,
        queries,
        "--n",
        "2",
        "--k",
        "2",
        "--strategies",
        "reconstruct,topk:most_helpful,balanced:0.5",
        "--step",
        "weighted",
        "--out",
        str(out),
    )
    assert weighted.returncode == 0, weighted.stderr
    assert "losses weighted by the simplex weights" in weighted.stdout
    assert "grad_dot top-k most helpful" in weighted.stdout
    assert "grad_dot FL lambda=0.5" in weighted.stdout
    assert "reconstruct minus each other strategy, paired over the same queries" in weighted.stdout
    assert weighted.stdout.count("difference ") == 2
    assert weighted.stdout.count(", n=2)") == 2
    records = json.loads(out.read_text())
    assert len(records) == 2 * 3
    assert {r["step"] for r in records} == {"weighted"}


def test_records_are_written_per_query(clf: Explainer, tmp_path: Path) -> None:
    from exemplar.research.records import write_records

    result = run_grid(clf, [Example(text="the cat sat")], estimators=("grad_dot",), ks=(1,))
    write_records(result, tmp_path / "r.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert len([r for r in rows if r["kind"] == "score"]) == len(result.records)
    assert {"query", "k", "ratio", "db", "rows", "label"} <= set(rows[0])
    assert [r for r in rows if r["kind"] == "bound"] == [
        {
            "kind": "bound",
            "query": 0,
            "best_single": result.bounds[0].best_single,
            "any_selection": result.bounds[0].any_selection,
        }
    ]


def test_reproduce_cli_on_a_tiny_index(classifier_index: Path, tmp_path: Path) -> None:
    queries = write_jsonl(
        tmp_path / "q.jsonl",
        [
            {"text": t, "label": lab}
            for t, lab in (("the cat sat", "neutral"), ("stocks fell", "negative"), ("what a day", "positive"))
        ],
    )
    eval_cli = Path(sys.executable).parent / "exemplar-eval"
    args = ["reproduce", "--demo", "tiny", "--index", str(classifier_index), "--test", str(queries), "--queries", "3"]
    args += [
        "--validate-queries",
        "1",
        "--validate-ks",
        "2",
        "--out",
        str(tmp_path / "out"),
        "--records",
        str(tmp_path / "r.jsonl"),
    ]
    run = subprocess.run([eval_cli, *args], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    report = (tmp_path / "out" / "tiny.md").read_text()
    assert "exemplar-eval reproduce --demo tiny" in report
    assert "3 held-out test queries" in report
    assert "Spearman(SRS, xi_plus)" in report
    assert "## In the model's full gradient space, with both solvers" in report  # --full-space by default
    assert "| Spearman(score full, exact, xi_plus) |" in report
    assert (tmp_path / "r.jsonl").stat().st_size > 0
    # the report renders again from the records alone, identical but for the line that says so
    again = subprocess.run(
        [eval_cli, "report", "--records", str(tmp_path / "r.jsonl"), "--out", str(tmp_path / "again")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr
    rendered = (tmp_path / "again" / "tiny.md").read_text().splitlines()
    note = [line for line in rendered if line.startswith("Rendered again from that run's records by")]
    assert note == [
        f"Rendered again from that run's records by `exemplar-eval report --records {tmp_path / 'r.jsonl'} --out {tmp_path / 'again'}`."
    ]
    assert (tmp_path / "again" / "tiny.md").read_text().replace(note[0] + "\n\n", "") == report
    (tmp_path / "bad.jsonl").write_text('{"kind": "score", "query": 0}\n')
    bad = subprocess.run(
        [eval_cli, "report", "--records", str(tmp_path / "bad.jsonl")], capture_output=True, text=True, timeout=300
    )
    assert bad.returncode == 2
    assert "line 1 is not a record of exemplar-eval" in bad.stderr
    missing = subprocess.run(
        [eval_cli, "reproduce", "--index", str(classifier_index)], capture_output=True, text=True, timeout=300
    )
    assert missing.returncode == 2
    assert "--test" in missing.stderr


def test_full_space_pass_takes_float64_products_when_float32_moves_a_score(
    clf: Explainer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from exemplar.research import evaluation
    from tests.test_explain import FULL_DB_ATOL, full_space_oracle

    monkeypatch.setattr(evaluation, "FLOAT32_MAX_DB", -1.0)  # any difference is too much
    queries = [Example(text="stocks fell", label="negative"), Example(text="what a day", label="positive")]
    result = run_grid(clf, queries, estimators=("grad_dot",), ks=(3,), bounds=False)
    evaluation.score_full_space(clf, queries, result, [{r.config for r in result.records}] * 2)
    assert result.checks["float64_products"] == 1.0
    for r in result.records:
        if r.config.strategy in {"reconstruct", "topk"}:
            oracle = full_space_oracle(clf, queries[r.query], np.asarray(r.rows), "paper")
            assert 10 * math.log10(r.scores["full/paper"]) == pytest.approx(oracle.db, abs=FULL_DB_ATOL)


def test_full_space_grid_scores_match_materialised_gradients(clf: Explainer, tmp_path: Path) -> None:
    from exemplar.research.evaluation import SCORE_KEYS, median_per_query_db, score_full_space
    from exemplar.research.records import read_records, write_records
    from tests.test_explain import FULL_DB_ATOL, full_space_oracle

    queries = [Example(text="stocks fell", label="negative"), Example(text="what a day", label="positive")]
    result = run_grid(clf, queries, estimators=("grad_dot",), ks=(1, 3), bounds=False)
    everything = {r.config for r in result.records}
    score_full_space(clf, queries, result, [everything, {Config("-", "random")}])
    assert result.spaces() == list(SCORE_KEYS)
    assert result.seconds["full_space"] > 0
    assert all(r.scores for r in result.records if r.query == 0 or r.config.strategy == "random")
    assert not any(r.scores for r in result.records if r.query == 1 and r.config.strategy != "random")
    # the float32 products of the pass were checked against float64 ones on the first query, and
    # where they moved a score too far (the paper solver's truncation, machine-dependent) the pass
    # took float64 products
    from exemplar.research.evaluation import FLOAT32_MAX_DB

    assert result.checks["float32_max_abs_db"] >= 0
    fell_back = result.checks["float32_max_abs_db"] > FLOAT32_MAX_DB
    assert result.checks.get("float64_products", 0.0) == (1.0 if fell_back else 0.0)
    checked = {r.config.strategy: r for r in result.records if r.query == 0 and r.k == 3}
    assert {"reconstruct", "balanced", "topk", "random"} <= set(checked)
    state = clf.prepare(queries[0])
    for r in checked.values():
        rows = np.asarray(r.rows)
        for solver in ("paper", "exact"):
            oracle = full_space_oracle(clf, queries[0], rows, solver)
            assert 10 * math.log10(r.scores[f"full/{solver}"]) == pytest.approx(oracle.db, abs=FULL_DB_ATOL)
        assert r.scores["projected/paper"] == r.ratio
        assert r.scores["projected/exact"] == pytest.approx(clf.score(state, rows, solver="exact").ratio, rel=1e-9)
        assert r.scores["projected/exact"] >= r.ratio * (1 - 1e-9)  # the exact solver is the optimum
    # medians per query: random's seeds are averaged within their query first
    randoms = [r for r in result.records if r.config.strategy == "random" and r.k == 1]
    per_query = [np.mean([r.scores["full/exact"] for r in randoms if r.query == q]) for q in (0, 1)]
    table = result.space_table()
    assert table[("-", "random", 1, "full/exact")]["median_db"] == pytest.approx(
        float(np.median([10 * math.log10(x) for x in per_query]))
    )
    assert median_per_query_db([(0, 10.0), (0, 30.0), (1, 1.0), (2, 100.0)]) == pytest.approx(10 * math.log10(20))
    # the records keep every space, so the report renders again with them
    write_records(result, tmp_path / "r.jsonl.gz", meta={"demo": "tiny"})  # committed compressed
    again, _ = read_records(tmp_path / "r.jsonl.gz")
    assert [r.scores for r in again.records] == [r.scores for r in result.records]
    assert again.checks == result.checks
    text = write_report(
        again, tmp_path, demo="tiny", command="test", index_summary={**clf.store.manifest.summary(), "full_dims": 1234}
    ).read_text()
    assert "## In the model's full gradient space, with both solvers" in text
    assert "(1,234 dims;" in text
    assert "`grad_dot`, full, paper: top-k most influential below 0 dB" in text
