"""Selection strategies: which k training examples to show for one query (paper.md sections 2
and 4, and ours), and the one registry of the names a request can use.

Every strategy implements `Strategy` (`exemplar.strategies.base`): a `name`, a `label` and a
`summary` for clients, `compared` (scored by default by `compare` and the evaluation grid),
and `propose(ctx)`, which reads the request through a `SelectionContext` and returns one or
more `Proposal`s. Modules, one role each:

- `base`: `Strategy`, `SelectionContext`, `Proposal`, the pure functions' input checks.
- `ranking`: orderings (`ORDERINGS`, `order_by`), the candidate pool (`retrieve`) and `"topk"`, `"random"`, `"self"`.
- `greedy`: the paper's `"balanced"` (facility location), `"divine"`, `"aide"`.
- `reconstruct` (+ `reduced`, its screening): ours, the selection that best rebuilds the
  query's gradient, with its pool.
- `auto`: the best-scoring of several strategies.

`STRATEGIES` maps each name to its implementation, in the order clients list them; the API
schema, `GET /v1/index`, the web page and the evaluation grid all read it. Adding a strategy
is one class in one of these modules (or a new one) plus one entry here; see
docs/architecture.md for the worked example.
"""

from __future__ import annotations

from exemplar.errors import InvalidInputError
from exemplar.strategies.auto import AUTO_CANDIDATES, Auto
from exemplar.strategies.base import Direct, FromPool, Proposal, SelectionContext, Strategy
from exemplar.strategies.greedy import AIDE, BALANCED, DIVINE
from exemplar.strategies.ranking import ORDERINGS, RANDOM, SELF, TOPK, order_by, retrieve
from exemplar.strategies.reconstruct import Reconstruct


def _registry(*strategies: Strategy) -> dict[str, Strategy]:
    return {s.name: s for s in strategies}


_PLAIN = _registry(BALANCED, TOPK, RANDOM, DIVINE, AIDE, SELF, Reconstruct())
STRATEGIES: dict[str, Strategy] = {**_PLAIN, "auto": Auto(_PLAIN)}
"""Every strategy a request can name, in the order clients list them."""
STRATEGY_NAMES = tuple(STRATEGIES)
COMPARED = tuple(name for name, s in STRATEGIES.items() if s.compared)
"""What `compare` scores by default and the evaluation grid can validate."""


def strategy(name: str) -> Strategy:
    """The registered strategy `name`; `InvalidInputError` naming the choices otherwise."""
    if name not in STRATEGIES:
        raise InvalidInputError(f"unknown strategy {name!r}; choose one of: {', '.join(STRATEGY_NAMES)}")
    return STRATEGIES[name]


__all__ = [
    "AUTO_CANDIDATES",
    "COMPARED",
    "ORDERINGS",
    "STRATEGIES",
    "STRATEGY_NAMES",
    "Direct",
    "FromPool",
    "Proposal",
    "SelectionContext",
    "Strategy",
    "order_by",
    "retrieve",
    "strategy",
]
