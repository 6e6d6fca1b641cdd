"""The pollution sweep (the paper's Fig. 4): how each method's selection and model quality move as
every silo gets more polluted, from the ``results.json`` of one benchmark run per pollution share."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from clues import plots
from clues.io import atomic_open
from clues.report import Table, fmt_num, fmt_pct, pooled_selection, render_html, render_markdown

TITLE = "Pollution sweep"
_PLOTS = (
    ("recall", "sweep_recall.png", "recall (share of clean records kept)"),
    ("f1", "sweep_f1.png", "F1 of the keep decision"),
)


def sweep_values(runs: Mapping[float, Mapping], metric: str) -> dict[str, dict[float, float | None]]:
    """``{condition: {pollution share: metric}}``; ``mean_test_loss`` and ``oracle_gain_recovered`` come
    from the conditions, the rest from the pooled selection metrics."""
    values: dict[str, dict[float, float | None]] = {}
    for share, results in sorted(runs.items()):
        for name, condition in (results.get("conditions") or {}).items():
            if name == "base":
                continue
            if metric in ("mean_test_loss", "oracle_gain_recovered"):
                value = condition.get(metric)
            else:
                value = (pooled_selection(results, name) or {}).get(metric)
            values.setdefault(name, {})[share] = value
    return values


# (metric, column label, digits; None = a percentage)
_COLUMNS = (("recall", "recall", 3), ("f1", "F1", 3), ("mean_test_loss", "loss", 4), ("oracle_gain_recovered", "gain", None))


def sweep_table(runs: Mapping[float, Mapping]) -> Table:
    shares = sorted(runs)
    data = {metric: sweep_values(runs, metric) for metric, _, _ in _COLUMNS}
    headers = ["method"] + [f"{label} @{round(100 * s)}%" for _, label, _ in _COLUMNS for s in shares]
    rows = []
    for name in data["recall"]:
        row = [name]
        for metric, _, digits in _COLUMNS:
            values = [data[metric][name].get(s) for s in shares]
            row += [fmt_pct(v) if digits is None else fmt_num(v, digits) for v in values]
        rows.append(row)
    return Table("Methods across pollution shares", headers, rows,
                 "Recall and F1 of the keep decision pooled over silos; mean test loss of the merged model; "
                 "oracle gain recovered (– where the oracle is not better than mixed data).")


def write_sweep(runs: Mapping[float, Mapping], out_dir: str | os.PathLike) -> dict[str, Path]:
    """``sweep.md``, ``sweep.html`` and one PNG per plotted metric in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = {}
    for metric, filename, label in _PLOTS:
        plots.sweep_lines(sweep_values(runs, metric), out_dir / filename, label, f"{label} vs. pollution")
        figures[f"{label} per method vs. pollution"] = out_dir / filename
    tables = [sweep_table(runs)]
    paths = {"markdown": out_dir / "sweep.md", "html": out_dir / "sweep.html"}
    with atomic_open(paths["markdown"]) as handle:
        handle.write(render_markdown(tables, figures, None, TITLE))
    with atomic_open(paths["html"]) as handle:
        handle.write(render_html(tables, figures, None, TITLE))
    return paths
