"""The reproduction report's PNG figures (matplotlib, Agg backend); `report.write_report` draws them."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

from exemplar.research.evaluation import GridResult
from exemplar.research.step_effects import reliability


def plot_grid(
    table: dict[tuple[str, str, int], dict[str, float]],
    estimators: list[str],
    ks: list[int],
    out_dir: Path,
    demo: str,
    *,
    paper_gain: Mapping[int, float],
) -> None:
    """Draw `<demo>_db_by_k.png` and `<demo>_gain.png` in ``out_dir``.

    The first shows each estimator's strategies by k; the second FL lambda=1 minus top-k per
    estimator, beside ``paper_gain`` (the paper's DataInf gains on OLMo-2, by k).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(estimators), figsize=(5 * len(estimators), 4), squeeze=False, sharey=True)
    shown = ["top-k most influential", "top-k least influential", "FL lambda=1", "divine", "aide"]
    for ax, est in zip(axes[0], estimators, strict=True):
        for label in shown:
            ys = [table.get((est, label, k), {}).get("mean_of_ratios_db", math.nan) for k in ks]
            ax.plot(ks, ys, marker="o", label=label)
        for label in ("random", "reconstruct"):
            ax.plot(
                ks, [table[("-", label, k)]["mean_of_ratios_db"] for k in ks], marker="s", linestyle="--", label=label
            )
        ax.axhline(0, color="grey", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_title(est)
        ax.set_xlabel("k")
    axes[0][0].set_ylabel("mean-of-ratios SRS (dB)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / f"{demo}_db_by_k.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for est in estimators:
        gains = [
            table[(est, "FL lambda=1", k)]["mean_of_ratios_db"]
            - table[(est, "top-k most influential", k)]["mean_of_ratios_db"]
            for k in ks
        ]
        ax.plot(ks, gains, marker="o", label=f"{est}: FL lambda=1 - top-k")
    ax.plot(ks, [paper_gain.get(k, math.nan) for k in ks], marker="x", color="black", label="paper (DataInf, OLMo-2)")
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("k")
    ax.set_ylabel("gain (dB)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / f"{demo}_gain.png", dpi=110)
    plt.close(fig)


def plot_validation(result: GridResult, out_dir: Path, demo: str) -> None:
    """Scatter of SRS vs xi_plus and the reliability curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = result.validation
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.scatter([r.srs_db for r in recs], [r.xi_plus for r in recs], s=6, alpha=0.5)
    a.axvline(0, color="grey", linewidth=0.8)
    a.axhline(0, color="grey", linewidth=0.8)
    a.set_xlabel("SRS (dB)")
    a.set_ylabel("xi_plus")
    bins = reliability(recs)
    b.plot(
        [10 * math.log10(math.sqrt(x["ratio_lo"] * x["ratio_hi"])) for x in bins],
        [x["accuracy"] for x in bins],
        marker="o",
    )
    b.axvline(0, color="grey", linewidth=0.8)
    b.axhline(0.5, color="grey", linewidth=0.8, linestyle="--")
    b.set_xlabel("SRS bin centre (dB)")
    b.set_ylabel("accuracy of sign(xi_plus) from SRS > 0 dB")
    fig.tight_layout()
    fig.savefig(out_dir / f"{demo}_validation.png", dpi=110)
    plt.close(fig)
