"""``"auto"``: run several strategies and keep the best-scoring selection.

``Auto`` proposes every selection of each of ``AUTO_CANDIDATES`` (in that order); the explainer
scores them all in the request's score space and serves the best, with a structured winner
(`exemplar.explain.Scored`: the winning proposal's strategy and each candidate's best score).
"""

from __future__ import annotations

from exemplar.strategies.base import Proposal, SelectionContext, Strategy

AUTO_CANDIDATES = ("topk", "balanced", "reconstruct")


class Auto:
    name = "auto"
    label = "auto"
    summary = "Tries top-k, balanced and reconstruct and keeps the best-scoring one."
    compared = False  # the best of three others, not a method of its own
    uses_influence = True
    scored_per_k = 3  # top-k, balanced and reconstruct's proposals, overlapping

    def __init__(self, candidates: dict[str, Strategy]) -> None:
        self.candidates = candidates

    def work(self, m: int, k: int, solver: str) -> float:
        return sum(self.candidates[name].work(m, k, solver) for name in AUTO_CANDIDATES)

    def propose(self, ctx: SelectionContext) -> list[Proposal]:
        return [p for name in AUTO_CANDIDATES for p in self.candidates[name].propose(ctx)]
