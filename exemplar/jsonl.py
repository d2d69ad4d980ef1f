"""Training sets: `read_examples_jsonl` parses and checks every row of a JSONL file, a Parquet
file or a `datasets` directory (each bad row is reported with its number, none is dropped
silently), `write_jsonl` writes examples back atomically, `too_long_check` refuses rows longer
than the model's max_length.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exemplar.errors import InvalidInputError
from exemplar.tasks import Example, Task, check_messages

REQUIRED = {"classification": ("text", "label"), "causal-lm": ("prompt", "response")}


@dataclass(frozen=True)
class RowError:
    """A rejected input row, reported with its 1-based line number."""

    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


def read_examples_jsonl(
    path: str | Path,
    task: str,
    labels: list[str] | None = None,
    check: Callable[[Example], str | None] | None = None,
) -> tuple[list[Example], list[RowError]]:
    """Parse a training set; every bad row is returned as an error, none is dropped silently.

    `path` is a JSONL file (read line by line), a Parquet file (`.parquet`) or a directory saved
    with `datasets`' `save_to_disk` (one split); `check(example)` may add a problem of its own
    (e.g. too many tokens for the model).

    Rows: classification `{"id"?, "text", "text_pair"?, "label"}`, causal-lm `{"id"?, "prompt",
    "response"}` or `{"id"?, "messages": [{"role", "content"}, ...]}` (the last turn the
    assistant's); optional `"source"` (str) and `"meta"` (object). Missing ids become
    `line-<n>` (the row's number, from 1). In Parquet and datasets rows a null is an absent field.
    """
    if task not in REQUIRED:
        raise InvalidInputError(f"unknown task {task!r}; choose one of: {', '.join(REQUIRED)}")
    p = Path(path)
    if not p.exists():
        raise InvalidInputError(f"data {str(p)!r} does not exist")
    examples: list[Example] = []
    errors: list[RowError] = []
    seen: dict[str, int] = {}
    for number, row in _rows(p):
        parsed = _parse_row(row, number, p.name, task, labels, seen)
        if isinstance(parsed, Example) and check is not None and (problem := check(parsed)):
            parsed = RowError(number, problem)
        if isinstance(parsed, RowError):
            errors.append(parsed)
        else:
            examples.append(parsed)
    return examples, errors


def _rows(p: Path) -> Iterator[tuple[int, Any]]:
    """(row number, the row: a dict, or a RowError for a line that is not JSON) of a data file."""
    if p.is_dir() or p.suffix == ".parquet":
        for number, row in enumerate(_columnar(p), start=1):
            yield number, {k: v for k, v in row.items() if v is not None}
        return
    with p.open(encoding="utf-8", errors="strict") as f:
        try:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    yield number, json.loads(line)
                except json.JSONDecodeError as exc:
                    yield number, RowError(number, f"not valid JSON ({exc.msg})")
        except UnicodeDecodeError as exc:
            raise InvalidInputError(f"{str(p)!r} is not valid UTF-8: {exc}") from exc


def _columnar(p: Path) -> Iterator[dict[str, Any]]:
    """The rows of a Parquet file or a `datasets` directory (`save_to_disk`), one at a time."""
    import datasets

    if p.is_dir():
        try:
            loaded = datasets.load_from_disk(str(p))
        except (FileNotFoundError, ValueError) as exc:
            raise InvalidInputError(f"{str(p)!r} is not a dataset saved with datasets' save_to_disk: {exc}") from exc
        if isinstance(loaded, datasets.DatasetDict):
            splits = ", ".join(f"{p / name}" for name in loaded)
            raise InvalidInputError(f"{str(p)!r} holds several splits; pass one of them: {splits}")
        dataset = loaded
    else:
        try:
            dataset = datasets.Dataset.from_parquet(str(p), keep_in_memory=False)
        except Exception as exc:  # pyarrow's errors have no common base class worth naming here
            raise InvalidInputError(f"{str(p)!r} is not a readable Parquet file: {exc}") from exc
    yield from dataset


def _parse_row(
    row: Any, number: int, file_name: str, task: str, labels: list[str] | None, seen: dict[str, int]
) -> Example | RowError:
    """One row's example, or what is wrong with it; a new id is added to `seen`."""
    if isinstance(row, RowError):
        return row
    if not isinstance(row, dict):
        return RowError(number, "each line must be a JSON object")
    problem = _row_problem(row, task, labels)
    if problem:
        return RowError(number, problem)
    example_id = str(row.get("id", f"line-{number}"))
    if example_id in seen:
        return RowError(number, f"duplicate id {example_id!r} (first on line {seen[example_id]})")
    seen[example_id] = number
    if task == "causal-lm" and "messages" in row:
        fields: dict[str, Any] = {"messages": [dict(turn) for turn in row["messages"]]}
    else:
        fields = {f: row[f] for f in REQUIRED[task]}
        if task == "classification" and "text_pair" in row:
            fields["text_pair"] = row["text_pair"]
    source = str(row.get("source", f"{file_name}:{number}"))
    return Example(id=example_id, source=source, meta=row.get("meta", {}), **fields)


def write_jsonl(path: Path, examples: Sequence[Example], prefix: str = "") -> None:
    """Write examples as JSONL (after the lines in ``prefix``), atomically."""
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(prefix)
        for e in examples:
            row = {
                k: v
                for k, v in (
                    ("id", e.id),
                    ("text", e.text),
                    ("text_pair", e.text_pair),
                    ("label", e.label),
                    ("prompt", e.prompt),
                    ("response", e.response),
                    ("messages", e.messages),
                )
                if v is not None
            }
            f.write(json.dumps({**row, "source": e.source, "meta": e.meta}, ensure_ascii=False) + "\n")
    tmp.replace(path)


def too_long_check(task: Task) -> Callable[[Example], str | None]:
    """A `check` for `read_examples_jsonl`: the example must fit the task's max_length in tokens."""

    def check(example: Example) -> str | None:
        encoded = task.encode(example)
        if encoded.truncated:
            return f"input is longer than --max-length {task.max_length} tokens (pass --truncate to cut it instead)"
        return None

    return check


def _row_problem(row: dict[str, Any], task: str, labels: list[str] | None) -> str | None:
    if task == "causal-lm" and "messages" in row:
        if "prompt" in row or "response" in row:
            return "a row has either 'messages' or 'prompt' and 'response', not both"
        if problem := check_messages(row["messages"]):
            return problem
    else:
        for name in REQUIRED[task]:
            value = row.get(name)
            if not isinstance(value, str) or not value.strip():
                return f"field {name!r} must be a non-empty string"
    if "text_pair" in row and (
        task != "classification" or not isinstance(row["text_pair"], str) or not row["text_pair"].strip()
    ):
        return "field 'text_pair' (classification: the second text of a pair) must be a non-empty string"
    if "id" in row and not isinstance(row["id"], str | int):
        return "field 'id' must be a string"
    if "meta" in row and not isinstance(row["meta"], dict):
        return "field 'meta' must be an object"
    if labels is not None and task == "classification" and row["label"] not in labels:
        return f"unknown label {row['label']!r}; the model's labels are: {', '.join(labels)}"
    return None
