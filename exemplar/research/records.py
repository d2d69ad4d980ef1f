"""The records of an evaluation run: every per-query score, validation and bound as JSON lines.

`write_records` writes what the report's tables only aggregate; `read_records` reads it back,
so `exemplar-eval report` renders a report again without re-running the grid
(`report.write_report`).
"""

from __future__ import annotations

import gzip
import json
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any

from exemplar.errors import InvalidInputError
from exemplar.research.evaluation import BoundRecord, Config, GridResult, ScoreRecord
from exemplar.research.step_effects import ValidationRecord


def write_records(result: GridResult, path: Path, meta: dict[str, object] | None = None) -> None:
    """Every per-query score and validation record as JSON lines (the tables only show aggregates).

    ``meta`` (the run's demo, command, index summary) is written first, with the query count
    and wall times, so `read_records` can render the report again without re-running.
    """
    with _open_text(path, "w") as f:
        if meta is not None:
            f.write(
                json.dumps(
                    {
                        "kind": "meta",
                        **meta,
                        "n_queries": result.n_queries,
                        "seconds": result.seconds,
                        "checks": result.checks,
                    }
                )
                + "\n"
            )
        for r in result.records:
            f.write(
                json.dumps({"kind": "score", **asdict(r), "config": asdict(r.config), "label": r.config.label}) + "\n"
            )
        for v in result.validation:
            f.write(json.dumps({"kind": "validation", **asdict(v)}) + "\n")
        for b in result.bounds:
            f.write(json.dumps({"kind": "bound", **asdict(b)}) + "\n")


def _open_text(path: Path, mode: str) -> IO[str]:
    """A records file, gzip-compressed when its name ends in ``.gz`` (how they are committed)."""
    if path.suffix != ".gz":
        return path.open(mode, encoding="utf-8")
    return gzip.open(path, "wt", encoding="utf-8") if mode == "w" else gzip.open(path, "rt", encoding="utf-8")


def read_records(path: Path) -> tuple[GridResult, dict[str, Any]]:
    """The run `write_records` wrote: its result and its meta line ({} when it has none)."""
    result = GridResult()
    meta: dict[str, Any] = {}
    try:
        with _open_text(path, "r") as f:
            lines = f.read().splitlines()
    except (OSError, EOFError) as exc:
        raise InvalidInputError(f"cannot read records file {path}: {getattr(exc, 'strerror', None) or exc}") from exc
    for no, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
            kind = row.pop("kind")
            if kind == "meta":
                meta = row
            elif kind == "score":
                row.pop("label", None)
                result.records.append(ScoreRecord(config=Config(**row.pop("config")), **row))
            elif kind == "validation":
                result.validation.append(ValidationRecord(**row))
            elif kind == "bound":
                result.bounds.append(BoundRecord(**row))
            else:
                raise ValueError(f"unknown kind {kind!r}")
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise InvalidInputError(f"{path} line {no} is not a record of exemplar-eval: {exc}") from exc
    if not result.records:
        raise InvalidInputError(f"{path} holds no score records")
    result.n_queries = int(meta.get("n_queries", 1 + max(r.query for r in result.records)))
    result.seconds = {str(k): float(v) for k, v in meta.get("seconds", {}).items()}
    result.checks = {str(k): float(v) for k, v in meta.get("checks", {}).items()}
    return result, meta
