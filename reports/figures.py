"""Matplotlib figures of the report, returned as PNG bytes (embedded as base64 in the HTML)."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # headless: no display on CI machines or in containers
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from reports.stats import curve_band  # noqa: E402

DPI = 110


def learning_curves(
    curves: dict[str, pd.DataFrame],
    title: str,
    ylabel: str,
    is_rate: bool,
    paper_values: dict[str, float] | None = None,
    reps: int = 2000,
) -> bytes:
    """One line per label: median over seeds at each evaluation point, shaded 95% bootstrap CI of
    the median; dotted horizontal lines are the paper's final values where it reports one."""
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=DPI)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, frame) in enumerate(curves.items()):
        if frame.empty:
            continue
        color = colors[i % len(colors)]
        scale = 100.0 if is_rate else 1.0
        med, lo, hi = curve_band(frame.to_numpy().T, reps=reps)
        x = frame.index.to_numpy()
        ax.plot(x, med * scale, color=color, lw=1.8, label=f"{label} (n={frame.shape[1]})")
        ax.fill_between(x, lo * scale, hi * scale, color=color, alpha=0.2, lw=0)
        if paper_values and label in paper_values:
            ax.axhline(paper_values[label] * scale, color=color, ls=":", lw=1.2)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("env steps")
    ax.set_ylabel(ylabel + (" (%)" if is_rate else ""))
    ax.grid(alpha=0.3)
    ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 4))
    if ax.lines:
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
