"""Plots of validation results."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .validate import FAMILIES, FAMILY_OF, Validation  # noqa: E402


def plot_validation(v: Validation, path: str, title: str = "measured vs predicted") -> None:
    """One panel per metric family: predicted (median, 5-95% band) against measured, log-log."""
    fig, axes = plt.subplots(1, len(FAMILIES), figsize=(4.2 * len(FAMILIES), 4.2))
    for ax, fam in zip(axes, FAMILIES):
        rows = [r for r in v.rows if FAMILY_OF.get(r.metric) == fam and r.measured > 0]
        if not rows:
            ax.set_visible(False)
            continue
        m = np.array([r.measured for r in rows])
        p = np.array([r.predicted for r in rows])
        lo = np.array([r.band_lo for r in rows])
        hi = np.array([r.band_hi for r in rows])
        ok = np.array([r.in_band for r in rows])
        ax.errorbar(m, p, yerr=[np.maximum(p - lo, 0), np.maximum(hi - p, 0)], fmt="none", ecolor="0.7", lw=1)
        ax.scatter(m[ok], p[ok], s=14, color="tab:green", label="measured inside band")
        ax.scatter(m[~ok], p[~ok], s=14, color="tab:red", label="outside band")
        a, b = min(m.min(), p.min()) * 0.8, max(m.max(), p.max()) * 1.25
        ax.plot([a, b], [a, b], "k--", lw=0.8)
        ax.fill_between([a, b], [a * 0.9, b * 0.9], [a * 1.1, b * 1.1], color="0.9", zorder=0, label="±10%")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("measured")
        ax.set_ylabel("predicted")
        med = np.median(np.abs(100 * (p - m) / m))
        ax.set_title(f"{fam}: median |error| {med:.1f}%")
    axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
