"""Figures of a study's results: proportions judged real with their intervals, and the ranking."""
from __future__ import annotations

import pandas as pd

__all__ = ["plot_real_or_fake", "plot_ranking"]


def plot_real_or_fake(table: pd.DataFrame, title: str, ax=None, paper: dict | None = None,
                      paper_label: str = "the paper's value (its own methods and data)"):
    """Proportion judged real per method with its Wilson interval (:func:`real_or_fake_table`);
    ``paper``: {method: a paper's proportion}, drawn as open diamonds labelled ``paper_label``."""
    import matplotlib.pyplot as plt

    ax = ax if ax is not None else plt.subplots(figsize=(8.4, 3.2))[1]
    rows = table.reset_index(drop=True)
    errors = [rows["proportion"] - rows["ci_low"], rows["ci_high"] - rows["proportion"]]
    ax.errorbar(rows["proportion"], range(len(rows)), xerr=errors, fmt="o", capsize=4, label="this study (95 % Wilson)")
    for method, value in (paper or {}).items():
        if method in set(rows["method"]):
            ax.plot(value, rows.index[rows["method"] == method][0], "D", mfc="none", color="tab:red")
    if paper:
        ax.plot([], [], "D", mfc="none", color="tab:red", label=paper_label)
    ax.set_yticks(range(len(rows)), rows["method"])
    ax.set_xlim(0, 1)
    ax.set_xlabel("proportion judged real")
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    ax.grid(axis="x", alpha=0.3)
    return ax


def plot_ranking(ranking: pd.DataFrame, title: str, ax=None):
    """Bradley-Terry strengths with their bootstrap intervals (:func:`which_more_real_ranking`)."""
    import matplotlib.pyplot as plt

    ax = ax if ax is not None else plt.subplots(figsize=(6.4, 2.8))[1]
    rows = ranking.iloc[::-1].reset_index(drop=True)
    # a percentile interval need not contain the point estimate: a bar end inside the interval draws no whisker
    errors = [(rows["strength"] - rows["ci_low"]).clip(lower=0), (rows["ci_high"] - rows["strength"]).clip(lower=0)]
    ax.barh(range(len(rows)), rows["strength"], xerr=errors, capsize=4, color="tab:blue", alpha=0.7)
    ax.set_yticks(range(len(rows)), rows["method"])
    ax.set_xlabel("Bradley-Terry strength (chance of being picked among all)")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    return ax
