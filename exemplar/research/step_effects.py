"""Validation by fine-tuning (paper.md section 5): does a selection actually move the model?

For a test instance `x'` and a selection `S`: one AdamW step (lr 1e-5, constant, the whole
selection in one step, mean loss) on a copy of the explained parameters; then
`delta_logp = log p(x') after - before` (sum of response-token log-likelihoods, or the
label's log-probability for a classifier) and the mean token Jensen-Shannon divergence
between the before/after predictive distributions. Random selections of the same k (5
seeds) give the baselines: `xi_plus = delta_logp(S) - mean delta_logp(random)` and
`xi_jsd = JSD(S) / mean JSD(random)`.

Beyond the paper, the ``weighted`` step (``STEPS``) weighs each selected example's loss by
the selection's own simplex weights instead of equally, for the selection and for its random
baselines alike: it validates the explanation as the service returns it, weights included.

The parameters updated are exactly the ones the gradients describe (the index's tracked
layers: LoRA matrices, or the linear weights of a classifier); they are restored after
every step, so the served model is never changed.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from exemplar.gradients import KroneckerFeaturizer
from exemplar.tasks import Example

LR = 1e-5
STEPS = ("mean", "weighted")
"""How a validation step weighs the selected examples' losses: ``mean`` (the paper's protocol)
or ``weighted`` (by the selection's own simplex weights, the explanation as the service returns it)."""


@dataclass(frozen=True)
class StepEffect:
    """What one fine-tuning step on a selection did to the test instance."""

    delta_logp: float
    jsd: float


def _log_probs(featurizer: KroneckerFeaturizer, example: Example) -> tuple[float, torch.Tensor]:
    """`log p(x')` (sum over response tokens / the label) and the per-position log-distributions."""
    task = featurizer.task
    encoded = task.encode(example)
    batch = task.collate([encoded])
    with torch.no_grad():
        logits = featurizer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    if task.name == "classification":
        logp = F.log_softmax(logits, dim=-1)  # (1, C)
        target = int(batch["targets"][0])
        if target < 0:
            target = int(logp.argmax())
        return float(logp[0, target]), logp
    logp = F.log_softmax(logits[0, :-1], dim=-1)  # (T-1, V)
    labels = batch["targets"][0, 1:]
    mask = labels != -100
    token_logp = logp[mask].gather(1, labels[mask].unsqueeze(1)).squeeze(1)
    return float(token_logp.sum()), logp[mask]


def jensen_shannon(logp: torch.Tensor, logq: torch.Tensor) -> float:
    """Mean over positions of JSD(p || q) in nats, from log-probabilities `(positions, V)`."""
    p, q = logp.exp(), logq.exp()
    logm = torch.log((p + q) / 2 + 1e-30)
    jsd = 0.5 * (p * (logp - logm)).sum(-1) + 0.5 * (q * (logq - logm)).sum(-1)
    return float(jsd.clamp(min=0).mean())


class StepValidator:
    """Applies one AdamW step on a selection and measures the test instance, then restores."""

    def __init__(self, featurizer: KroneckerFeaturizer, lr: float = LR) -> None:
        self.featurizer = featurizer
        self.lr = lr
        self.params = [m.weight for _, m in featurizer.layers]
        # every step is undone, so the unstepped model's answer to a test instance is the same
        # for all its selections: keep the last one (the validation steps query by query)
        self._before: tuple[Example, tuple[float, torch.Tensor]] | None = None

    def _unstepped(self, test: Example) -> tuple[float, torch.Tensor]:
        if self._before is None or self._before[0] != test:
            self._before = (test, _log_probs(self.featurizer, test))
        return self._before[1]

    def effect(self, test: Example, selection: Sequence[Example], weights: Sequence[float] | None = None) -> StepEffect:
        """One step on ``selection``: the paper's mean loss, or the ``weights``-weighted sum of losses.

        ``weights`` (the explanation's simplex weights, say) must be non-negative and sum to 1.
        """
        if weights is not None and (
            len(weights) != len(selection) or min(weights) < 0 or not math.isclose(sum(weights), 1.0, abs_tol=1e-6)
        ):
            raise ValueError("weights must be one non-negative number per selected example, summing to 1")
        before_logp, before_dist = self._unstepped(test)
        saved = [p.detach().clone() for p in self.params]
        task = self.featurizer.task
        try:
            optimizer = torch.optim.AdamW(self.params, lr=self.lr, weight_decay=0.0)
            batch = task.collate([task.encode(e) for e in selection])
            with torch.enable_grad():
                losses = task.per_example_loss(self.featurizer.model, batch).losses
                loss = losses.mean() if weights is None else losses @ torch.tensor(weights).to(losses)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
            optimizer.step()
            after_logp, after_dist = _log_probs(self.featurizer, test)
        finally:
            with torch.no_grad():
                for p, s in zip(self.params, saved, strict=True):
                    p.copy_(s)
                    p.grad = None
        return StepEffect(after_logp - before_logp, jensen_shannon(before_dist, after_dist))


@dataclass(frozen=True)
class ValidationRecord:
    """One (test instance, selection) pair against its random baselines."""

    query: int
    strategy: str
    k: int
    srs_ratio: float
    srs_db: float
    xi_plus: float
    xi_jsd: float
    step: str = "mean"  # one of STEPS: how the losses of this selection and its random baselines were weighted
    scores: dict[str, float] = field(default_factory=dict)  # the selection's ratio in other spaces (ScoreRecord.scores)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties); nan for fewer than 3 points."""
    from scipy.stats import spearmanr

    if len(x) < 3:
        return math.nan
    return float(spearmanr(x, y).statistic)


def paired_difference(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean of ``a - b`` over pairs and its t confidence interval; nan bounds below 2 pairs."""
    from scipy.stats import t

    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    mean = float(d.mean())
    if len(d) < 2:
        return mean, math.nan, math.nan
    half = float(t.ppf(0.5 + level / 2, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d)))
    return mean, mean - half, mean + half


@dataclass(frozen=True)
class PairedXiPlus:
    """One strategy's mean ``xi_plus`` against a reference strategy's at one k, over the same queries."""

    k: int
    strategy: str
    reference_mean: float  # the reference strategy's mean xi_plus over the shared queries
    mean: float  # this strategy's
    difference: float  # mean of reference minus this strategy, per query
    lo: float  # its 95% t interval
    hi: float
    n: int  # shared queries


def paired_xi_plus(records: Sequence[ValidationRecord], reference: str) -> list[PairedXiPlus]:
    """``reference``'s ``xi_plus`` minus every other validated strategy's, per k, paired per query.

    Only queries where both were validated at that k count. Ordered by k, then by the other
    strategy's mean, best first. Empty when ``reference`` was not validated.
    """
    at: dict[int, dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))  # k -> strategy -> query -> xi
    for r in records:
        at[r.k][r.strategy][r.query] = r.xi_plus
    out = []
    for k in sorted(at):
        ours = at[k].get(reference)
        if not ours:
            continue
        rows = []
        for strategy, xs in at[k].items():
            queries = sorted(set(ours) & set(xs))
            if strategy == reference or not queries:
                continue
            a, b = [ours[q] for q in queries], [xs[q] for q in queries]
            diff, lo, hi = paired_difference(a, b)
            rows.append(PairedXiPlus(k, strategy, float(np.mean(a)), float(np.mean(b)), diff, lo, hi, len(queries)))
        out.extend(sorted(rows, key=lambda p: -p.mean))
    return out


def reliability(records: Sequence[ValidationRecord], bins: int = 20) -> list[dict[str, float]]:
    """Accuracy of predicting `xi_plus > 0` from `SRS > 0 dB`, in log-spaced bins of the linear ratio."""
    ratios = np.array([r.srs_ratio for r in records])
    positive = ratios[ratios > 0]
    if len(positive) == 0:
        return []
    edges = np.logspace(np.log10(positive.min()), np.log10(positive.max()) + 1e-9, bins + 1)
    out = []
    for lo, hi in itertools.pairwise(edges):
        inside = [r for r in records if lo <= r.srs_ratio < hi]
        if not inside:
            continue
        correct = sum((r.srs_db > 0) == (r.xi_plus > 0) for r in inside)
        out.append({"ratio_lo": float(lo), "ratio_hi": float(hi), "n": len(inside), "accuracy": correct / len(inside)})
    return out
