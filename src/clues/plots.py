"""The report's PNG plots, drawn with matplotlib's Agg renderer: score histograms with tau, test loss
per condition, kept vs clean share, federated per-round curves, ROC curves, and the pollution sweep.

Figures are built from :class:`matplotlib.figure.Figure` directly, never through ``pyplot``: no global
backend switch in the caller's process, no figure left open, and the same inputs give the same bytes
(fixed size, dpi and colours, and no timestamp or version in the PNG metadata).
"""

from __future__ import annotations

import math
import os
from typing import Mapping, Sequence

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from clues.histogram import score_histogram
from clues.io import atomic_open

DPI = 100
CLEAN_COLOR = "#2b8cbe"
CORRUPT_COLOR = "#e6550d"
UNLABELLED_COLOR = "#737373"
TAU_COLOR = "#222222"
# One colour per condition / method, in order of appearance (matplotlib's colour-blind friendly "tab10").
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


def _save(fig: Figure, path: str | os.PathLike) -> None:
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=DPI, metadata={"Software": None})


def score_histograms(score_data: Mapping[str, Mapping], path: str | os.PathLike) -> None:
    """One panel per silo: the distribution of its scores, the threshold tau as a vertical line.

    With labels, clean and corrupted records are stacked in two colours on shared bins, so one sees
    how much of each side of tau is which. ``score_data``: ``{silo: {"tau", and either "scores" (+
    "clean": list of bool or None) or "histogram"}}``; a histogram is what a silo may share without
    revealing its scores: ``{"edges", "all", "clean"?, "corrupted"?}`` (:func:`clues.histogram.score_histogram`).
    """
    silos = list(score_data)
    cols = min(3, max(1, len(silos)))
    rows = max(1, math.ceil(len(silos) / cols))
    fig = Figure(figsize=(4.2 * cols, 3.0 * rows))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, silo in zip(axes, silos):
        data = score_data[silo]
        tau = data.get("tau")
        hist = data["histogram"] if "histogram" in data else score_histogram(data.get("scores", []), data.get("clean"))
        edges = list(hist.get("edges", []))
        if "clean" in hist and "corrupted" in hist:
            series = [("clean", hist["clean"], CLEAN_COLOR), ("corrupted", hist["corrupted"], CORRUPT_COLOR)]
        else:
            series = [("records", hist.get("all", []), UNLABELLED_COLOR)]
        if len(edges) >= 2:
            widths = [b - a for a, b in zip(edges, edges[1:])]
            bottom = [0] * len(widths)
            for label, counts, color in series:
                ax.bar(edges[:-1], counts, width=widths, bottom=bottom, align="edge", color=color, label=label)
                bottom = [b + c for b, c in zip(bottom, counts)]
        if tau is not None and math.isfinite(tau):
            ax.axvline(tau, color=TAU_COLOR, linestyle="--", linewidth=1.5, label=f"tau = {tau:.3g}")
        ax.set_title(f"{silo} (n={sum(hist.get('all', []))})")
        ax.set_xlabel("score (higher = higher quality)")
        ax.set_ylabel("records")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize="small")
    for ax in axes[len(silos):]:
        ax.set_visible(False)
    fig.tight_layout()
    _save(fig, path)


def loss_bars(test_loss: Mapping[str, Mapping[str, float]], path: str | os.PathLike) -> None:
    """Grouped bars: one group per domain, one bar per condition (``{condition: {domain: loss}}``)."""
    conditions = list(test_loss)
    domains = sorted({d for losses in test_loss.values() for d in losses})
    width = 0.8 / max(1, len(conditions))
    fig = Figure(figsize=(max(6.0, 2.5 + 0.45 * len(domains) * max(1, len(conditions))), 3.8))
    ax = fig.subplots()
    for k, condition in enumerate(conditions):
        xs = [i + (k - (len(conditions) - 1) / 2) * width for i, d in enumerate(domains) if d in test_loss[condition]]
        ys = [test_loss[condition][d] for d in domains if d in test_loss[condition]]
        ax.bar(xs, ys, width=width, color=PALETTE[k % len(PALETTE)], label=condition)
    # Losses differ by a few percent between conditions: start the axis near the smallest bar so the
    # differences are visible (the exact numbers are in the report's table).
    values = [v for losses in test_loss.values() for v in losses.values() if math.isfinite(v)]
    if values:
        low, high = min(values), max(values)
        pad = max(high - low, 0.05 * abs(high)) * 0.3
        ax.set_ylim(max(0.0, low - pad) if low >= 0 else low - pad, high + pad)
    ax.set_xticks(range(len(domains)))
    ax.set_xticklabels(domains, rotation=20 if len(domains) > 4 else 0)
    ax.set_ylabel("test loss (mean response-token loss)")
    ax.set_title("Held-out loss per domain (lower is better; axis not from 0)")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    _save(fig, path)


def kept_vs_clean(points: Mapping[str, Mapping[str, tuple[float, float]]], path: str | os.PathLike) -> None:
    """Kept fraction against the true clean fraction, one point per silo and method, with y = x.

    A perfect selector sits on the diagonal; above it a silo keeps corrupted records, below it drops
    clean ones. ``points``: ``{method: {silo: (clean_fraction, kept_fraction)}}``.
    """
    fig = Figure(figsize=(4.8, 4.6))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="#999999", linestyle=":", linewidth=1, label="y = x")
    for k, (method, silos) in enumerate(points.items()):
        xs = [x for x, _ in silos.values()]
        ys = [y for _, y in silos.values()]
        ax.scatter(xs, ys, color=PALETTE[k % len(PALETTE)], label=method, zorder=3)
        for silo, (x, y) in silos.items():
            ax.annotate(silo, (x, y), textcoords="offset points", xytext=(4, 4), fontsize="x-small")
    ax.set_xlim(0, 1.05)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("true clean fraction")
    ax.set_ylabel("kept fraction")
    ax.set_title("Kept vs. clean fraction per silo")
    ax.legend(fontsize="small", loc="upper left")
    fig.tight_layout()
    _save(fig, path)


def round_curves(curves: Mapping[str, Sequence[Mapping]], path: str | os.PathLike) -> None:
    """Per-round global test loss of each federated condition (``{condition: [{"round", "mean_test_loss"}]}``)."""
    fig = Figure(figsize=(6.4, 3.8))
    ax = fig.subplots()
    for k, (condition, points) in enumerate(curves.items()):
        xs = [p["round"] for p in points if p.get("mean_test_loss") is not None]
        ys = [p["mean_test_loss"] for p in points if p.get("mean_test_loss") is not None]
        ax.plot(xs, ys, marker="o", markersize=3, color=PALETTE[k % len(PALETTE)], label=condition)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("FedAvg round")
    ax.set_ylabel("global test loss (macro mean over domains)")
    ax.set_title("Federated: global model's held-out loss after each round")
    ax.legend(fontsize="small")
    fig.tight_layout()
    _save(fig, path)


def roc_curves(curves: Mapping[str, Sequence[float]], path: str | os.PathLike) -> None:
    """One ROC curve per method: true-positive rate (clean kept) against false-positive rate
    (corrupted kept), each curve given as TPR on an even FPR grid from 0 to 1 (``{method: [tpr]}``)."""
    fig = Figure(figsize=(5.2, 4.8))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="#999999", linestyle=":", linewidth=1, label="chance")
    for k, (method, tpr) in enumerate(curves.items()):
        fpr = [i / (len(tpr) - 1) for i in range(len(tpr))]
        ax.plot(fpr, tpr, color=PALETTE[k % len(PALETTE)], linewidth=1.6, label=method)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("false-positive rate (share of corrupted records kept)")
    ax.set_ylabel("true-positive rate (share of clean records kept)")
    ax.set_title("ROC per method (silos averaged vertically)")
    ax.legend(fontsize="small", loc="lower right")
    fig.tight_layout()
    _save(fig, path)


def sweep_lines(values: Mapping[str, Mapping[float, float]], path: str | os.PathLike, ylabel: str, title: str) -> None:
    """One line per method over the pollution share (``{method: {pollution: value}}``)."""
    fig = Figure(figsize=(5.6, 4.0))
    ax = fig.subplots()
    for k, (method, points) in enumerate(values.items()):
        xs = sorted(x for x, y in points.items() if y is not None)
        ax.plot([100 * x for x in xs], [points[x] for x in xs], marker="o", color=PALETTE[k % len(PALETTE)], label=method)
    ax.set_xlabel("pollution in every silo (%)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    _save(fig, path)
