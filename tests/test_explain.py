"""The Explainer on tiny real indexes: candidates, strategies, weights and score."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from exemplar.errors import InvalidInputError
from exemplar.explain import Explainer
from exemplar.relevance import selection_relevance
from exemplar.tasks import Example


@pytest.fixture(scope="module")
def clf(classifier_index: Path) -> Explainer:
    return Explainer.from_index(classifier_index)


def test_candidates_are_the_most_influential_rows(clf: Explainer) -> None:
    grad, _ = clf.query_gradient(Example(text="the cat sat on the mat"))
    rows, influence = clf.candidates(grad, 10)
    brute = -(np.asarray(clf.store.vectors) @ grad)
    expected = np.sort(np.abs(brute))[::-1][:10]
    np.testing.assert_allclose(np.abs(influence), expected, rtol=1e-5)
    np.testing.assert_allclose(influence, brute[rows], rtol=1e-5)


@pytest.mark.parametrize("strategy", ["balanced", "topk", "random"])
def test_explanation_is_consistent(clf: Explainer, strategy: str) -> None:
    result = clf.explain(Example(text="i love this movie", label="positive"), k=4, strategy=strategy)
    ids = [s.example.id for s in result.examples]
    assert len(ids) == 4 == len(set(ids))
    weights = np.array([s.weight for s in result.examples])
    assert (weights >= 0).all()
    assert weights.sum() == pytest.approx(1.0, abs=1e-5)
    grad, _ = clf.query_gradient(Example(text="i love this movie", label="positive"))
    rows = [s.example.row for s in result.examples]
    expected = selection_relevance(grad, clf.store.vectors_at(np.array(rows)))
    assert result.score_db == pytest.approx(expected.db, abs=1e-4)
    assert result.prediction["explained_label"] == "positive"
    assert set(result.timings_ms) >= {"gradient", "search", "selection", "score", "total"}


def test_topk_returns_largest_abs_influence(clf: Explainer) -> None:
    result = clf.explain(Example(text="stocks fell"), k=3, strategy="topk")
    influence = [abs(s.influence) for s in result.examples]
    assert influence == sorted(influence, reverse=True)


def test_bad_requests(clf: Explainer) -> None:
    with pytest.raises(InvalidInputError, match="k must be"):
        clf.explain(Example(text="x"), k=0)
    with pytest.raises(InvalidInputError, match="unknown strategy"):
        clf.explain(Example(text="x"), strategy="best")
    with pytest.raises(InvalidInputError, match="non-empty"):
        clf.explain(Example(text="   "))


def test_causal_lm_explanation(causal_index: Path) -> None:
    explainer = Explainer.from_index(causal_index)
    result = explainer.explain(Example(prompt="is this message spam or ham", response="spam"), k=3)
    assert len({s.example.id for s in result.examples}) == 3
    assert np.isfinite(result.score_db)
    assert result.prediction["response_tokens"] >= 1
