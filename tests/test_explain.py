"""The Explainer on tiny real indexes: estimators against brute force, candidates, strategies, score."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from exemplar.errors import InvalidInputError
from exemplar.explain import Explainer
from exemplar.fullspace import ReferenceGram
from exemplar.gradients import select_linear_layers
from exemplar.options import ExplainOptions
from exemplar.relevance import Relevance, selection_relevance
from exemplar.results import Explanation
from exemplar.strategies import COMPARED, ORDERINGS, STRATEGY_NAMES, retrieve
from exemplar.strategies.reconstruct import ReconstructPool
from exemplar.tasks import Example


@pytest.fixture(scope="module")
def clf(classifier_index: Path) -> Explainer:
    return Explainer.from_index(classifier_index)


@pytest.fixture(scope="module")
def causal_explainer(causal_index: Path) -> Explainer:
    return Explainer.from_index(causal_index)


def brute_influence(explainer: Explainer, estimator: str, query: Example) -> np.ndarray:
    """Obviously-correct influence of every stored row, straight from the definitions."""
    state = explainer.prepare(query)
    v = np.asarray(explainer.store.vectors, dtype=np.float64)
    g = state.grad.astype(np.float64)
    if estimator == "grad_dot":
        return -(v @ g)
    if estimator == "grad_cos":
        return np.array([-(row @ g) / (np.linalg.norm(row) * np.linalg.norm(g)) for row in v])
    if estimator == "datainf":
        layers = len(explainer.store.manifest.layer_names)
        p = v.shape[1] // layers
        n = v.shape[0]
        out = np.zeros(n)
        for layer in range(layers):
            block = v[:, layer * p : (layer + 1) * p]
            vl = g[layer * p : (layer + 1) * p]
            lam = 0.1 * np.mean([(gi @ gi) / p for gi in block])
            h = sum(vl - (gi @ vl) / (lam + gi @ gi) * gi for gi in block) / (n * lam)
            out -= block @ h
        return out
    # bm25: Okapi with k1 = 1.5, b = 0.75, idf = ln((N - df + 0.5)/(df + 0.5) + 1)
    task = explainer.featurizer.task
    docs = [
        task.lexical_ids(Example(text=e.text, label=e.label))
        for e in explainer.store.examples_at(range(explainer.store.n))
    ]
    terms = set(task.lexical_ids(query))
    avgdl = np.mean([len(d) for d in docs])
    df = Counter(t for d in docs for t in set(d))
    scores = []
    for d in docs:
        tf = Counter(d)
        s = 0.0
        for t in terms:
            if tf[t]:
                idf = math.log((len(docs) - df[t] + 0.5) / (df[t] + 0.5) + 1)
                s += idf * tf[t] * 2.5 / (tf[t] + 1.5 * (0.25 + 0.75 * len(d) / avgdl))
        scores.append(s)
    return np.array(scores)


@pytest.mark.parametrize("estimator", ["grad_dot", "grad_cos", "datainf", "bm25"])
def test_estimators_match_brute_force(clf: Explainer, estimator: str) -> None:
    query = Example(text="the cat sat on the mat stocks", label="positive")
    state = clf.prepare(query)
    expected = brute_influence(clf, estimator, query)
    est = clf.estimators.get(estimator)
    np.testing.assert_allclose(
        est.scan(clf.store, state.query), expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max()
    )
    rows = np.array([3, 0, 7])
    np.testing.assert_allclose(
        est.influence(clf.store, state.query, rows), expected[rows], rtol=1e-4, atol=1e-6 * np.abs(expected).max()
    )


@pytest.mark.parametrize("estimator", ["grad_dot", "datainf", "grad_cos"])
@pytest.mark.parametrize("ordering", ORDERINGS)
def test_candidates_are_the_top_rows_under_each_ordering(clf: Explainer, estimator: str, ordering: str) -> None:
    query = Example(text="i love this movie")
    state = clf.prepare(query)
    expected = brute_influence(clf, estimator, query)
    key = {
        "most_influential": -np.abs(expected),
        "least_influential": np.abs(expected),
        "most_helpful": expected,
        "most_harmful": -expected,
    }[ordering]
    rows, influence = retrieve(clf.store, clf.estimators.get(estimator), state.query, ordering, 10)
    np.testing.assert_allclose(np.sort(key[rows]), np.sort(key)[:10], rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(influence, expected[rows], rtol=1e-4, atol=1e-7)


SAME_DB_ATOL = 1e-3
"""One selection scored in two calls: the full-space passes batch the examples differently (float32 rounding)."""
FULL_DB_ATOL = 0.05
"""Served full-space score vs materialised full gradients (the issue's bar; measured ~1e-6 dB here)."""


def full_space_oracle(explainer: Explainer, query: Example, rows: np.ndarray, solver: str) -> Relevance:
    """The score of `rows` from each example's materialised full gradient (per-example autograd)."""
    g, a = full_gradients(explainer, query, rows)
    return selection_relevance(g, a, solver=solver)


def full_gradients(explainer: Explainer, query: Example, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The query's and `rows`' materialised full gradients, `(d,)` and `(k, d)` float64."""
    model, task = explainer.featurizer.model, explainer.featurizer.task
    oracle = ReferenceGram(model, task, select_linear_layers(model, explainer.store.manifest.params))
    stored = explainer.store.examples_at(rows.tolist())
    training = [Example(text=e.text, label=e.label, prompt=e.prompt, response=e.response) for e in stored]
    full, _ = oracle.gradients([query, *training])
    return full[0], full[1:]


def assert_weights_reconstruct_like_the_oracle(
    explainer: Explainer, query: Example, result: Explanation, oracle: Relevance
) -> None:
    """The served weights leave the oracle's residual variance on the full gradients (duplicated
    examples make the weights themselves non-unique)."""
    g, a = full_gradients(explainer, query, np.array([s.example.row for s in result.examples]))
    var_r = float(np.var(g - a.T @ np.array([s.weight for s in result.examples])))
    # within FULL_DB_ATOL: the paper solver's truncated pinv reacts to float32 rounding of the Gram
    assert var_r == pytest.approx(oracle.var_r, rel=10 ** (FULL_DB_ATOL / 10) - 1, abs=1e-12)


@pytest.mark.parametrize("solver", ["paper", "exact"])
@pytest.mark.parametrize("strategy", [s for s in STRATEGY_NAMES if s != "self"])
def test_every_strategy_is_scored_on_the_full_gradients(clf: Explainer, strategy: str, solver: str) -> None:
    query = Example(text="i love this movie", label="positive")
    result = clf.explain(query, k=4, strategy=strategy, solver=solver)
    ids = [s.example.id for s in result.examples]
    assert len(ids) == 4 == len(set(ids))
    weights = np.array([s.weight for s in result.examples])
    assert (weights >= 0).all()
    assert weights.sum() == pytest.approx(1.0, abs=1e-5)
    rows = np.array([s.example.row for s in result.examples])
    oracle = full_space_oracle(clf, query, rows, solver)
    assert result.score_space == "full"
    assert result.score_db == pytest.approx(oracle.db, abs=FULL_DB_ATOL)
    assert_weights_reconstruct_like_the_oracle(clf, query, result, oracle)
    state = clf.prepare(query)
    projected = selection_relevance(state.grad, clf.store.vectors_at(rows), solver=solver).db
    assert result.projected_score_db == pytest.approx(projected, abs=1e-4)
    assert result.n_weighted == int(np.sum(weights > 1e-6))
    assert result.prediction["explained_label"] == "positive"
    assert set(result.timings_ms) >= {"gradient", "selection", "score", "total"}


@pytest.mark.parametrize("solver", ["paper", "exact"])
@pytest.mark.parametrize("strategy", [s for s in STRATEGY_NAMES if s != "self"])
def test_causal_lm_scores_on_the_full_gradients(causal_explainer: Explainer, strategy: str, solver: str) -> None:
    query = Example(prompt="is this message spam or ham", response="spam")
    result = causal_explainer.explain(query, k=3, strategy=strategy, solver=solver)
    rows = np.array([s.example.row for s in result.examples])
    oracle = full_space_oracle(causal_explainer, query, rows, solver)
    assert result.score_db == pytest.approx(oracle.db, abs=FULL_DB_ATOL)
    assert_weights_reconstruct_like_the_oracle(causal_explainer, query, result, oracle)


def test_projected_score_space_scores_the_index_vectors(clf: Explainer) -> None:
    query = Example(text="i love this movie", label="positive")
    result = clf.explain(query, k=4, strategy="balanced", score_space="projected")
    rows = np.array([s.example.row for s in result.examples])
    expected = selection_relevance(clf.prepare(query).grad, clf.store.vectors_at(rows))
    assert result.score_space == "projected"
    assert result.score_db == pytest.approx(expected.db, abs=1e-4) == result.projected_score_db
    with pytest.raises(InvalidInputError, match="score_space"):
        clf.explain(query, k=4, score_space="somewhere")


def test_auto_returns_the_best_scoring_strategy(clf: Explainer) -> None:
    query = Example(text="stocks fell sharply")
    auto = clf.explain(query, k=3, strategy="auto")
    scores = {s: clf.explain(query, k=3, strategy=s).score_db for s in ("topk", "balanced", "reconstruct")}
    assert auto.score_db == pytest.approx(max(scores.values()), abs=SAME_DB_ATOL)
    assert auto.reason is not None
    assert auto.strategy in scores
    assert auto.reason.startswith(auto.strategy)


@pytest.mark.parametrize(("nearest", "aligned"), [(5, 0), (0, 4), (6, 6), (1000, 3)])
def test_reconstruct_candidates_are_the_centred_nearest_and_the_most_aligned(
    clf: Explainer, nearest: int, aligned: int
) -> None:
    state = clf.prepare(Example(text="what a boring afternoon"))
    vectors = clf.store.vectors_at(np.arange(clf.store.n)).astype(np.float64)
    g = state.grad.astype(np.float64)
    centred = vectors - vectors.mean(axis=1, keepdims=True)
    dist2 = np.array([float(np.sum((row - (g - g.mean())) ** 2)) for row in centred])
    cos = np.array([float(row @ g / (np.linalg.norm(row) * np.linalg.norm(g))) for row in vectors])
    got = set(ReconstructPool(clf.store).candidates(state.grad, nearest, aligned).tolist())
    # The tiny corpus repeats texts, so rows tie; the scan is float32: compare up to rounding.
    n, tol_d, tol_c = clf.store.n, 1e-6 * float(np.max(np.sum(vectors**2, axis=1))), 1e-6
    near_cut = np.sort(dist2)[min(nearest, n) - 1] if nearest else -np.inf  # m-th smallest distance
    cos_cut = np.sort(cos)[::-1][min(aligned, n) - 1] if aligned else np.inf  # m-th largest cosine
    surely = (dist2 < near_cut - tol_d) | (cos > cos_cut + tol_c)
    maybe = (dist2 <= near_cut + tol_d) | (cos >= cos_cut - tol_c)
    assert set(np.flatnonzero(surely).tolist()) <= got <= set(np.flatnonzero(maybe).tolist())
    assert len(got) >= min(max(nearest, aligned), n)


def test_centred_gram_is_the_gram_matrix_of_the_centred_rows(clf: Explainer) -> None:
    vectors = clf.store.vectors_at(np.arange(clf.store.n)).astype(np.float64)
    centred = vectors - vectors.mean(axis=1, keepdims=True)
    pools = ReconstructPool(clf.store)
    gram = pools.centred_gram()
    scale = float(np.max(np.diag(gram)))
    np.testing.assert_allclose(gram, centred @ centred.T, atol=1e-9 * scale)
    assert pools.centred_gram() is gram  # kept for the next query


@pytest.mark.parametrize("whole_store", [True, False])
def test_reconstruct_candidates_add_the_support_of_the_best_mixture(
    clf: Explainer, monkeypatch: pytest.MonkeyPatch, whole_store: bool
) -> None:
    """The mixture rows are the support of the exact simplex fit of the centred query by the
    centred rows: all rows for a small store, else the nearest, aligned and anti-aligned ones."""
    import exemplar.strategies.reconstruct as reconstruct_module
    from exemplar.simplex import exact_simplex_weights

    if not whole_store:
        monkeypatch.setattr(reconstruct_module, "RECONSTRUCT_MIXTURE_ROWS", 1)
    state = clf.prepare(Example(text="what a boring afternoon"))
    nearest, aligned = 3, 3
    pools = ReconstructPool(clf.store)
    plain = pools.candidates(state.grad, nearest, aligned)
    got = pools.candidates(state.grad, nearest, aligned, mixture=True)
    vectors = clf.store.vectors_at(np.arange(clf.store.n)).astype(np.float64)
    g = state.grad.astype(np.float64)
    if whole_store:
        fit_rows = np.arange(clf.store.n)
    else:
        cos = vectors @ g / np.linalg.norm(vectors, axis=1)
        fit_rows = np.union1d(plain, np.argsort(cos, kind="stable")[:aligned])
    centred = vectors - vectors.mean(axis=1, keepdims=True)
    g_c = g - g.mean()

    def best_fit(rows: np.ndarray) -> float:  # the smallest ||g_c - A_c.T t||^2 over the simplex of `rows`
        return float(np.sum((g_c - centred[rows].T @ exact_simplex_weights(g_c, centred[rows])) ** 2))

    # Duplicated texts give tied rows, so the optimal weights are not unique: compare objectives.
    mixture = np.intersect1d(got, fit_rows)
    assert best_fit(mixture) <= best_fit(fit_rows) * (1 + 1e-6) + 1e-12
    assert best_fit(plain) > best_fit(fit_rows) * (1 + 1e-3)  # the mixture rows add something here
    assert set(plain.tolist()) <= set(got.tolist()) <= set(plain.tolist()) | set(fit_rows.tolist())
    assert np.all(np.diff(got) > 0)


def test_reconstruct_beats_topk_and_exact_solver_beats_paper(clf: Explainer) -> None:
    query = Example(text="what a boring afternoon")
    topk = clf.explain(query, k=5, strategy="topk").score_db
    ours = clf.explain(query, k=5, strategy="reconstruct").score_db
    assert ours >= topk
    paper = clf.explain(query, k=5, strategy="balanced", solver="paper", score_space="projected")
    exact = clf.explain(query, k=5, strategy="balanced", solver="exact", score_space="projected")
    assert [s.example.id for s in paper.examples] == [s.example.id for s in exact.examples]
    g = clf.prepare(query).grad.astype(np.float64)
    a = clf.store.vectors_at(np.array([s.example.row for s in paper.examples])).astype(np.float64)

    def residual(result: Explanation) -> float:
        return float(np.sum((g - a.T @ np.array([s.weight for s in result.examples])) ** 2))

    assert residual(exact) <= residual(paper) * (1 + 1e-9)  # the exact solver minimises ||A^T t - g||^2


def test_self_strategy_finds_the_training_example(clf: Explainer) -> None:
    first = clf.store.examples_at([5])[0]
    query = Example(text=first.text, label=first.label)
    result = clf.explain(query, k=1, strategy="self")
    assert [s.example.id for s in result.examples] == [first.id]
    assert result.projected_score_db > 40  # the query's gradient is the stored one
    # in the full space too, where Var(g) is small and the score is Var(g) / (0 + EPS)
    oracle = full_space_oracle(clf, query, np.array([5]), "paper")
    assert oracle.var_r == 0
    assert result.score_db == pytest.approx(oracle.db, abs=1e-3)
    with pytest.raises(InvalidInputError, match="not a training example"):
        clf.explain(Example(text="a sentence that is not in the training set"), k=1, strategy="self")


def test_topk_follows_the_ordering(clf: Explainer) -> None:
    query = Example(text="stocks fell")
    helpful = clf.explain(query, k=3, strategy="topk", ordering="most_helpful")
    influence = [s.influence for s in helpful.examples]
    assert influence == sorted(influence)
    harmful = clf.explain(query, k=3, strategy="topk", ordering="most_harmful")
    assert [s.influence for s in harmful.examples] == sorted((s.influence for s in harmful.examples), reverse=True)


def test_bad_options(clf: Explainer) -> None:
    with pytest.raises(InvalidInputError, match="k must be"):
        clf.explain(Example(text="x"), k=0)
    with pytest.raises(InvalidInputError, match="unknown strategy"):
        clf.explain(Example(text="x"), strategy="best")
    with pytest.raises(InvalidInputError, match="similarity without sign"):
        clf.explain(Example(text="x"), estimator="bm25", ordering="most_helpful")
    with pytest.raises(InvalidInputError, match="non-empty"):
        clf.explain(Example(text="   "))
    with pytest.raises(TypeError):
        ExplainOptions(colour="red")  # type: ignore[call-arg]


def test_compare_featurises_once_and_scores_like_explain(clf: Explainer, monkeypatch: pytest.MonkeyPatch) -> None:
    query = Example(text="stocks fell sharply", label="negative")
    calls = []
    prepare = clf.prepare
    monkeypatch.setattr(clf, "prepare", lambda q, **kw: calls.append(q) or prepare(q, **kw))
    result = clf.compare(query, ExplainOptions(k=4, strategy="balanced"))
    assert len(calls) == 1
    assert [p.strategy for p in result.by_strategy] == list(COMPARED)  # balanced is among them
    assert [p.k for p in result.by_k] == [1, 4, 5, 10, 25]  # the defaults (index of 36) and the chosen k
    assert all(p.strategy == "balanced" for p in result.by_k)
    monkeypatch.undo()
    for point in result.by_strategy:
        assert point.k == 4 == point.n_examples
        expected = clf.explain(query, k=4, strategy=point.strategy).score_db
        assert point.score_db == pytest.approx(expected, abs=SAME_DB_ATOL), point.strategy
    for point in result.by_k:
        expected = clf.explain(query, k=point.k, strategy="balanced").score_db
        assert point.score_db == pytest.approx(expected, abs=SAME_DB_ATOL), point.k
    chosen = next(p for p in result.by_k if p.k == 4)
    assert chosen == next(p for p in result.by_strategy if p.strategy == "balanced")
    assert result.prediction["explained_label"] == "negative"
    assert set(result.timings_ms) == {"gradient", "selection_and_score", "total"}


def test_compare_explicit_choices_auto_and_small_indexes(clf: Explainer) -> None:
    query = Example(text="what a boring afternoon")
    result = clf.compare(query, ExplainOptions(k=3, strategy="auto"), strategies=["auto", "topk", "auto"], ks=[50, 2])
    assert [p.strategy for p in result.by_strategy] == ["auto", "topk"]
    assert [p.k for p in result.by_k] == [2, 50]
    assert all(
        p.reason is not None and p.reason.split(" ")[0] in ("topk", "balanced", "reconstruct") for p in result.by_k
    )
    assert result.by_strategy[1].reason is None
    assert result.by_k[1].n_examples <= clf.store.n  # k beyond the index size: every example at most
    best = max(clf.explain(query, k=3, strategy=s).score_db for s in ("topk", "balanced", "reconstruct"))
    assert result.by_strategy[0].score_db == pytest.approx(best, abs=SAME_DB_ATOL)


@pytest.mark.parametrize(
    ("options", "kwargs", "message"),
    [
        (ExplainOptions(k=0), {}, "k must be"),
        (ExplainOptions(), {"ks": [5, 51]}, "k must be"),
        (ExplainOptions(), {"strategies": ["topk", "best"]}, "unknown strategy"),
        (ExplainOptions(), {"strategies": []}, "at least one strategy"),
        (ExplainOptions(estimator="bm25", ordering="most_helpful"), {}, "similarity without sign"),
        (ExplainOptions(estimator="tracin"), {}, "checkpoints"),
        (ExplainOptions(lam=2.0), {}, "lam"),
    ],
)
def test_compare_refuses_bad_options_before_featurising(
    clf: Explainer, monkeypatch: pytest.MonkeyPatch, options: ExplainOptions, kwargs: dict[str, list], message: str
) -> None:
    def never(query: Example) -> None:
        raise AssertionError("featurised despite bad options")

    monkeypatch.setattr(clf, "prepare", never)
    with pytest.raises(InvalidInputError, match=message):
        clf.compare(Example(text="x"), options, **kwargs)


def test_compare_self_needs_a_training_example(clf: Explainer) -> None:
    first = clf.store.examples_at([5])[0]
    result = clf.compare(Example(text=first.text, label=first.label), ExplainOptions(k=1, strategy="self"))
    assert all(p.n_examples == 1 and p.projected_score_db > 40 and p.score_db > 30 for p in result.by_k)
    with pytest.raises(InvalidInputError, match="not a training example"):
        clf.compare(Example(text="not a training sentence"), ExplainOptions(strategy="self"))


def test_causal_lm_explanation(causal_index: Path) -> None:
    explainer = Explainer.from_index(causal_index)
    for estimator in ("grad_dot", "datainf", "bm25"):
        result = explainer.explain(
            Example(prompt="is this message spam or ham", response="spam"), k=3, estimator=estimator
        )
        assert len({s.example.id for s in result.examples}) == 3
        assert np.isfinite(result.score_db)
    assert result.prediction["response_tokens"] >= 1


def test_tracin_sums_checkpoints_with_learning_rates(
    tmp_path: Path, classifier_dir: Path, classification_data: Path, clf: Explainer
) -> None:
    from exemplar.build import build_index
    from exemplar.gradients import ProjectionConfig
    from exemplar.index import build_featurizer
    from exemplar.jsonl import read_examples_jsonl
    from exemplar.models import load_model
    from tests.tiny_models import LABELS, save_classifier

    early = save_classifier(tmp_path / "early", seed=7)
    examples, _ = read_examples_jsonl(classification_data, "classification", LABELS)
    config = ProjectionConfig(params="linear", proj_dim=16)
    rates = ((early, 0.5), (classifier_dir, 0.25))
    checkpoints = [(load_model(path, "classification"), lr) for path, lr in rates]
    build_index(
        load_model(classifier_dir, "classification"),
        examples,
        tmp_path / "idx",
        config,
        max_length=32,
        checkpoints=checkpoints,
    )
    explainer = Explainer.from_index(tmp_path / "idx")
    query = Example(text="the cat sat", label="neutral")
    state = explainer.prepare(query)
    explainer.checkpoint_gradients(state)
    influence = explainer.estimators.get("tracin").scan(explainer.store, state.query)
    expected = np.zeros(len(examples))  # brute force: featurise everything under each checkpoint
    for path, lr in rates:
        featurizer = build_featurizer(load_model(path, "classification"), config, 32)
        v = featurizer.featurize(examples).vectors.astype(np.float64)
        g = featurizer.featurize([query]).vectors[0].astype(np.float64)
        expected -= lr * (v @ g)
    np.testing.assert_allclose(influence, expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max())
    assert len(explainer.explain(query, k=3, estimator="tracin", strategy="topk").examples) == 3
    with pytest.raises(InvalidInputError, match="checkpoints"):
        clf.explain(query, estimator="tracin")


def test_float16_index_explains_like_float32(
    tmp_path: Path, classifier_dir: Path, classification_data: Path, clf: Explainer
) -> None:
    from exemplar.build import build_index
    from exemplar.gradients import ProjectionConfig
    from exemplar.jsonl import read_examples_jsonl
    from exemplar.models import load_model
    from tests.tiny_models import LABELS

    examples, _ = read_examples_jsonl(classification_data, "classification", LABELS)
    config = ProjectionConfig(params="linear", proj_dim=16)
    build_index(
        load_model(classifier_dir, "classification"),
        examples,
        tmp_path / "h",
        config,
        max_length=32,
        vector_dtype="float16",
    )
    half = Explainer.from_index(tmp_path / "h")
    query = Example(text="i love this movie", label="positive")
    a, b = half.explain(query, k=4, strategy="topk"), clf.explain(query, k=4, strategy="topk")
    assert [s.example.id for s in a.examples] == [s.example.id for s in b.examples]
    assert a.score_db == pytest.approx(b.score_db, abs=0.05)


def test_explain_many_matches_one_by_one_and_isolates_bad_queries(clf: Explainer) -> None:
    from exemplar.errors import ExemplarError

    queries = [
        (Example(text="the market crashed today"), ExplainOptions(k=3, strategy="topk")),
        (Example(text="lovely sunny weather", label="no-such-label"), ExplainOptions(k=3)),
        (Example(text="a short one"), ExplainOptions(k=4, strategy="balanced")),
        (Example(text="the market crashed today"), ExplainOptions(k=2, strategy="reconstruct")),
    ]
    batched = clf.explain_many(queries)
    assert isinstance(batched[1], ExemplarError)
    assert "no-such-label" in str(batched[1])
    for i in (0, 2, 3):
        one = clf.explain(*queries[i])
        many = batched[i]
        assert not isinstance(many, ExemplarError)
        assert [s.example.id for s in many.examples] == [s.example.id for s in one.examples]
        np.testing.assert_allclose([s.weight for s in many.examples], [s.weight for s in one.examples], atol=1e-4)
        assert many.score_db == pytest.approx(one.score_db, abs=1e-3)


def test_rerank_full_orders_the_projected_pool_by_exact_influence(clf: Explainer) -> None:
    query = Example(text="stocks fell sharply", label="negative")
    result = clf.explain(query, k=4, strategy="topk", rerank="full", pool_size=20)
    state = clf.prepare(query)
    pool, _ = retrieve(clf.store, clf.estimators.get("grad_dot"), state.query, "most_influential", 20)
    g, a = full_gradients(clf, query, pool)
    exact = -(a @ g)  # (20,) Grad-Dot influence on the materialised full gradients
    expected = pool[np.argsort(-np.abs(exact), kind="stable")[:4]]
    assert [s.example.row for s in result.examples] == expected.tolist()
    got = np.array([s.influence for s in result.examples])
    np.testing.assert_allclose(got, exact[np.argsort(-np.abs(exact), kind="stable")[:4]], rtol=1e-5)
    # without the query's kept factors (projected scores), its pass runs once here, with the same ranking
    projected = clf.explain(query, k=4, strategy="topk", rerank="full", pool_size=20, score_space="projected")
    assert [s.example.row for s in projected.examples] == expected.tolist()
    with pytest.raises(InvalidInputError, match="grad_dot"):
        clf.explain(query, k=4, rerank="full", estimator="grad_cos")
    with pytest.raises(InvalidInputError, match="pool_size of at most 1000"):
        clf.explain(query, k=4, rerank="full", pool_size=1001)
