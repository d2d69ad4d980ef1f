"""The cost estimate (exemplar.cost): what it grows with, the limit's error, the row clock."""

from __future__ import annotations

import pytest

from exemplar.cost import HEAVY_COST_S, RowClock, estimate
from exemplar.errors import CapacityError, CostLimitError
from exemplar.strategies import STRATEGIES


def cost(points: list[tuple[str, int]], **kw: object) -> float:
    args: dict[str, object] = {"pool": 100, "n": 2000, "solver": "paper", "full_space": True, "rerank": False}
    args.update(kw)
    return estimate(points, row_s=0.1, **args).seconds  # type: ignore[arg-type]


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_every_registered_strategy_states_its_work(name: str) -> None:
    small, large = cost([(name, 5)]), cost([(name, 50)], pool=2000)
    assert 0 < small < large


def test_the_estimate_grows_with_what_the_request_asks_for() -> None:
    one = cost([("balanced", 10)])
    assert cost([("balanced", 10)], pool=1000) > one  # a larger pool
    assert cost([("balanced", 10), ("reconstruct", 10)]) > one  # more selections
    assert cost([("balanced", 10)], rerank=True) > one  # the pool through the model
    assert cost([("balanced", 10)], full_space=False) < one  # no model work to score
    assert cost([("reconstruct", 25)], solver="exact") > cost([("reconstruct", 25)])
    assert cost([("balanced", 10)], pool=10_000, n=300) == cost([("balanced", 10)], pool=300, n=300)  # pool <= n


def test_the_default_request_is_light_and_the_issues_compare_is_not() -> None:
    """Issue 24's heavy compare (k = 50, 6 strategies, 8 ks, pool 10,000, exact) over 2,000 rows: far above
    the 300 s deadline; the default explain (reconstruct, k = 5, full space): light."""
    default = estimate([("reconstruct", 5)], pool=100, n=2000, solver="paper", full_space=True, rerank=False, row_s=0.1)
    assert not default.heavy
    assert default.seconds < HEAVY_COST_S
    names = ["topk", "balanced", "divine", "aide", "reconstruct", "random"]
    points = [(s, 50) for s in names] + [("reconstruct", k) for k in (1, 2, 5, 10, 20, 25, 40)]
    heavy = estimate(points, pool=10_000, n=2000, solver="exact", full_space=True, rerank=False, row_s=0.1)
    assert heavy.heavy
    assert heavy.seconds > 300
    assert heavy.selections == 13
    assert heavy.pool == 2000


def test_above_the_limit_is_a_capacity_error_that_says_what_to_do() -> None:
    c = estimate([("reconstruct", 50)], pool=2000, n=2000, solver="exact", full_space=True, rerank=False, row_s=0.1)
    c.check(None)  # no limit
    c.check(0)  # 0: no limit either
    c.check(c.seconds + 1)
    with pytest.raises(CostLimitError) as refused:
        c.check(60)
    assert isinstance(refused.value, CapacityError)  # 413 through the one error map
    message = str(refused.value)
    assert "limit of 60 s" in message
    assert "POST /v1/jobs" in message
    assert "pool_size" in message
    assert refused.value.limit_s == 60
    assert refused.value.estimate_s == pytest.approx(c.seconds)


def test_the_row_clock_follows_what_requests_measure() -> None:
    clock = RowClock(0.1)
    clock.observe(0, 5.0)  # nothing measured: ignored
    assert clock.seconds == 0.1
    for _ in range(50):
        clock.observe(10, 3.0)  # 0.3 s per row
    assert clock.seconds == pytest.approx(0.3, rel=1e-3)
