"""What a request will cost, estimated before it runs (issue 24).

The estimate is in seconds on this server, from what the request asks for and the served index:

- **selection**: each (strategy, k) the request makes works over its candidate pool
  (m = min(pool size, n) rows). Each registered strategy states its own `work(m, k, solver)`
  in seconds (`exemplar.strategies`), with coefficients measured on this project's 2-core
  reference machine (`benchmarks/cost.py` prints the estimate beside the measured time). The
  estimate is an envelope, not a prediction: `reconstruct` with the exact solver is strongly
  data-dependent (k = 25 over 2,000 tweets took 7.7 s, k = 50 took 788 s), and its term is
  fitted to the slow end;
- **model**: the training examples the model runs on, one forward/backward and the full-space
  products each (the full-space score of every proposal's rows: `scored_per_k` rows per k, and
  the products of their pairs, `PAIRS_PER_ROW`; exact re-ranking of the pool), at this
  server's seconds per example (`RowClock`: `ROW_SECONDS` until requests have measured it, then
  their moving average).

The API uses it twice: a request estimated above `HEAVY_COST_S` runs on the heavy lane (it
takes the model only in short turns, after light work), and one estimated above the
deployment's limit (by default its request deadline, since such a request would most likely be
stopped by it) is refused up front (`CostLimitError`, 413) with the estimate, the limit and
where to send it instead.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

from exemplar.errors import CostLimitError
from exemplar.strategies import strategy

HEAVY_COST_S = 2.0
"""A request estimated above this many seconds is heavy: the API runs it on its heavy lane."""

ROW_SECONDS = 0.1
"""Seconds per training example through the model (forward/backward and full-space products)
until this server has measured its own: 0.08 (10 rows) to 0.13 (50 rows) on the tweets demo."""

PAIRS_PER_ROW = 35.0
"""Full-space scoring multiplies each selection's pairs too: k^2 pair products cost about as much
as k^2 / 35 examples' passes (top-k on tweets: 5.0 s at k = 25, 14.1 s at k = 50). The row clock
counts work in these units: rows + pairs / `PAIRS_PER_ROW`."""

ROW_CLOCK_WEIGHT = 0.2
"""Weight of each new measurement in `RowClock`'s moving average."""


@dataclass(frozen=True)
class Cost:
    """A request's estimated cost: seconds of selection and of model work, and what they come from."""

    selection_s: float
    model_s: float
    selections: int  # (strategy, k) points
    pool: int  # candidates per selection
    model_rows: int  # training examples run through the model

    @property
    def seconds(self) -> float:
        return self.selection_s + self.model_s

    @property
    def heavy(self) -> bool:
        return self.seconds > HEAVY_COST_S

    def describe(self) -> str:
        return (
            f"about {self.seconds:,.0f} s ({self.selections} selection(s) over {self.pool:,} candidates: "
            f"{self.selection_s:,.0f} s; {self.model_rows:,} training examples through the model: {self.model_s:,.0f} s)"
        )

    def check(self, limit_s: float | None) -> None:
        """Raise `CostLimitError` when the estimate is above `limit_s` seconds (None or 0: no limit)."""
        if limit_s and self.seconds > limit_s:
            raise CostLimitError(
                f"this request is estimated at {self.describe()}, above this server's limit of {limit_s:g} s per "
                "request: ask for less (a smaller pool_size or k, fewer strategies or ks, the paper solver) or "
                "submit it as a batch job (POST /v1/jobs), which runs on a worker without this limit",
                estimate_s=self.seconds,
                limit_s=limit_s,
            )


def estimate(
    points: Sequence[tuple[str, int]],
    *,
    pool: int,
    n: int,
    solver: str,
    full_space: bool,
    rerank: bool,
    row_s: float,
) -> Cost:
    """The cost of making each (strategy, k) of `points` over a pool of `pool` candidates from an
    index of `n` rows, scoring them in the full space or not, re-ranking the pool exactly or not,
    at `row_s` seconds per training example through the model."""
    m = max(1, min(pool, n))
    selection_s = sum(strategy(name).work(m, k, solver) for name, k in points)
    scored = sum(min(k, n) * strategy(name).scored_per_k for name, k in points)
    pairs = sum(min(k, n) ** 2 * strategy(name).scored_per_k for name, k in points)
    rows = (min(scored, n) if full_space else 0) + (m if rerank else 0)
    units = rows + (pairs / PAIRS_PER_ROW if full_space else 0.0)
    return Cost(selection_s, units * row_s, len(points), m, rows)


def model_units(rows: int, subset_sizes: Sequence[int] = ()) -> float:
    """Model work of a pass over `rows` examples that multiplies the pairs of subsets of these sizes."""
    return rows + sum(size * size for size in subset_sizes) / PAIRS_PER_ROW


class RowClock:
    """This server's seconds per training example through the model (`model_units`): `ROW_SECONDS`
    until measured, then a moving average of what full-space scoring and re-ranking measure
    (thread-safe)."""

    def __init__(self, seconds: float = ROW_SECONDS) -> None:
        self._seconds = seconds
        self._lock = threading.Lock()

    @property
    def seconds(self) -> float:
        return self._seconds

    def observe(self, units: float, seconds: float) -> None:
        if units <= 0 or seconds <= 0:
            return
        with self._lock:
            self._seconds += ROW_CLOCK_WEIGHT * (seconds / units - self._seconds)
