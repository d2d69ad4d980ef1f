"""Training sets as JSONL: `read_examples_jsonl` parses and checks every row (each bad row is
reported with its line number, none is dropped silently), `write_jsonl` writes examples back
atomically, `too_long_check` refuses rows longer than the model's max_length.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exemplar.errors import InvalidInputError
from exemplar.tasks import Example, Task

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
    """Parse a JSONL training set; every bad row is returned as an error, none is dropped silently.

    `check(example)` may add a problem of its own (e.g. too many tokens for the model).

    Rows: classification `{"id"?, "text", "label"}`, causal-lm `{"id"?, "prompt", "response"}`;
    optional `"source"` (str) and `"meta"` (object). Missing ids become `line-<n>`.
    """
    if task not in REQUIRED:
        raise InvalidInputError(f"unknown task {task!r}; choose one of: {', '.join(REQUIRED)}")
    p = Path(path)
    if not p.is_file():
        raise InvalidInputError(f"data file {str(p)!r} does not exist")
    examples: list[Example] = []
    errors: list[RowError] = []
    seen: dict[str, int] = {}
    with p.open(encoding="utf-8", errors="strict") as f:
        try:
            lines = list(f)
        except UnicodeDecodeError as exc:
            raise InvalidInputError(f"{str(p)!r} is not valid UTF-8: {exc}") from exc
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row: Any = json.loads(line)
        except json.JSONDecodeError as exc:
            errors.append(RowError(number, f"not valid JSON ({exc.msg})"))
            continue
        if not isinstance(row, dict):
            errors.append(RowError(number, "each line must be a JSON object"))
            continue
        problem = _row_problem(row, task, labels)
        if problem:
            errors.append(RowError(number, problem))
            continue
        example_id = str(row.get("id", f"line-{number}"))
        if example_id in seen:
            errors.append(RowError(number, f"duplicate id {example_id!r} (first on line {seen[example_id]})"))
            continue
        seen[example_id] = number
        meta = row.get("meta", {})
        fields = {f: row[f] for f in REQUIRED[task]}
        example = Example(id=example_id, source=str(row.get("source", f"{p.name}:{number}")), meta=meta, **fields)
        problem = check(example) if check is not None else None
        if problem:
            errors.append(RowError(number, problem))
            continue
        examples.append(example)
    return examples, errors


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
                    ("label", e.label),
                    ("prompt", e.prompt),
                    ("response", e.response),
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
    for name in REQUIRED[task]:
        value = row.get(name)
        if not isinstance(value, str) or not value.strip():
            return f"field {name!r} must be a non-empty string"
    if "id" in row and not isinstance(row["id"], str | int):
        return "field 'id' must be a string"
    if "meta" in row and not isinstance(row["meta"], dict):
        return "field 'meta' must be an object"
    if labels is not None and task == "classification" and row["label"] not in labels:
        return f"unknown label {row['label']!r}; the model's labels are: {', '.join(labels)}"
    return None
