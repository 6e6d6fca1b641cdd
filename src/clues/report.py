"""The run report of both modes (merging and federated): ``results.json``, ``timing.json`` (the wall
times, apart so the rest is reproducible), ``report.md``, a self-contained ``report.html`` and the PNG
plots (:mod:`clues.plots`).

Each table is built once as plain rows (:class:`Table`) and then rendered three ways (Markdown, HTML,
a rich table on the terminal), so the three views can never disagree. The HTML embeds its plots as
base64 data URIs and carries its own CSS: it can be mailed or archived as one file, and opening it
fetches nothing.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from clues import plots
from clues.evaluate import oracle_gain_recovered
from clues.io import atomic_open
from clues.verdict import verdict

SCORE_PLOT = "score_histograms.png"
LOSS_PLOT = "test_loss.png"
KEPT_PLOT = "kept_vs_clean.png"
ROUNDS_PLOT = "federated_rounds.png"
ROC_PLOT = "roc_curves.png"
SELECTION_METRICS = ("precision", "recall", "f1", "accuracy", "auroc")


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[str]]
    note: str = ""
    text: bool = False  # cells of prose (answers): left-aligned, unlike the numbers of every other table


def fmt_num(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, bool) or isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def fmt_pct(value) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{100 * value:.1f}%"


# --- tables ---------------------------------------------------------------------------------------


def _domains(conditions: Mapping) -> list[str]:
    return sorted({d for c in conditions.values() for d in c.get("test_loss", {})})


def loss_table(results: Mapping) -> Table | None:
    """Conditions x domains test loss, with the mean and the oracle gain recovered."""
    conditions = results.get("conditions") or {}
    if not conditions:
        return None
    domains = _domains(conditions)
    rows = []
    for name, c in conditions.items():
        losses = c.get("test_loss", {})
        rows.append(
            [name] + [fmt_num(losses.get(d)) for d in domains]
            + [fmt_num(c.get("mean_test_loss")), fmt_pct(c.get("oracle_gain_recovered"))]
        )
    return Table(
        "Test loss by condition",
        ["condition"] + domains + ["mean", "oracle gain recovered"],
        rows,
        "Mean response-token loss on the held-out test set (lower is better). Oracle gain recovered = "
        "(mixed - condition) / (mixed - oracle): 0% is no better than training on all records, "
        "100% matches training on the clean records only; – where the oracle's test losses are not lower "
        "than mixed's by more than noise (95% interval over test records).",
    )


def gain_table(results: Mapping) -> Table | None:
    """Oracle gain recovered per domain, computed from the test losses when mixed and oracle ran.

    Merging conditions are measured against ``mixed``/``oracle``, federated ones (``fl-*``) against
    ``fl-mixed``/``fl-oracle``: each family against its own references.
    """
    conditions = results.get("conditions") or {}
    domains = _domains(conditions)
    rows = []
    for prefix in ("", "fl-"):
        mixed_name, oracle_name = f"{prefix}mixed", f"{prefix}oracle"
        if mixed_name not in conditions or oracle_name not in conditions:
            continue
        mixed, oracle = conditions[mixed_name], conditions[oracle_name]
        for name, c in conditions.items():
            if name in (mixed_name, oracle_name) or name.startswith("fl-") != bool(prefix):
                continue
            gains = oracle_gain_recovered(mixed.get("test_loss", {}), c.get("test_loss", {}), oracle.get("test_loss", {}),
                                          records_mixed=mixed.get("record_losses"),
                                          records_oracle=oracle.get("record_losses"))["per_domain"]
            rows.append([name] + [fmt_pct(gains.get(d)) for d in domains])
    if not rows:
        return None
    return Table("Oracle gain recovered per domain", ["condition"] + domains, rows,
                 "– where clean data does not lower the loss by more than noise (no gain to recover).")


def accuracy_table(results: Mapping) -> Table | None:
    """Multiple-choice accuracy per condition and domain, when the run measured it."""
    conditions = {}
    for name, c in (results.get("conditions") or {}).items():
        accuracy = c.get("mcq_accuracy") or {}
        # {domain: float}, or MCQResult.as_dict() with the per-domain numbers under "accuracy"
        accuracy = accuracy.get("accuracy", accuracy) if isinstance(accuracy, Mapping) else {}
        if accuracy:
            conditions[name] = accuracy
    if not conditions:
        return None
    domains = sorted({d for acc in conditions.values() for d in acc})
    rows = [[n] + [fmt_pct(acc.get(d)) for d in domains] for n, acc in conditions.items()]
    return Table("Multiple-choice accuracy", ["condition"] + domains, rows,
                 "Share of questions whose right option has the lowest response loss.")


def preference_table(results: Mapping) -> Table | None:
    """The quality probe per condition and corruption type, when the run measured it."""
    conditions = {n: c["preference"] for n, c in (results.get("conditions") or {}).items() if c.get("preference")}
    if not conditions:
        return None
    kinds = sorted({k for p in conditions.values() for k in p["accuracy"]})
    rows = [[n] + [fmt_pct(p["accuracy"].get(k)) for k in kinds] + [fmt_pct(p.get("mean"))] for n, p in conditions.items()]
    pairs = next(iter(conditions.values()))["pairs"]
    return Table("Quality probe: real answer preferred over a corrupted one", ["condition"] + kinds + ["mean"], rows,
                 "Share of held-out questions whose real answer gets a lower loss than its corrupted twin "
                 f"({', '.join(f'{k} {n}' for k, n in pairs.items())} pairs; a tie counts one half). "
                 "50% is chance.")


def answers_table(results: Mapping) -> Table | None:
    """Per condition, the share of its answers passing each check and all of them (macro mean over
    domains), then the all-checks rate per domain."""
    from clues.answers.quality import CHECKS

    conditions = {n: c["answers"] for n, c in (results.get("conditions") or {}).items() if c.get("answers")}
    if not conditions:
        return None
    domains = sorted({d for a in conditions.values() for d in a["rates"]["passed"]["per_domain"]})
    rows = [[n] + [fmt_pct(a["rates"][c]["mean"]) for c in (*CHECKS, "passed")]
            + [fmt_pct(a["rates"]["passed"]["per_domain"].get(d)) for d in domains] for n, a in conditions.items()]
    return Table(
        "Answer quality: the model's own answers to the test questions",
        ["condition", *(c.replace("_", " ") for c in CHECKS), "all checks"] + [f"all checks: {d}" for d in domains],
        rows,
        "Greedy answers, one per test question, checked without a judge: language (not confidently in another "
        "language, py3langid), complete (the model ended it, at a sentence end or a whole option), "
        "fluent (the base model finds it as likely as 9 in 10 of "
        "the domain's reference answers), relevant (ROUGE-L >= 0.1 against the reference; names an option on "
        "multiple-choice questions). Shares are macro means over domains; – where a check was not measured.",
    )


def answer_gain_table(results: Mapping) -> Table | None:
    """Each condition's all-checks pass rate minus mixed's, answer by answer, per domain and overall, with
    the 95% interval of the paired difference (federated conditions against ``fl-mixed``)."""
    from clues.stats import paired_difference

    conditions = {n: c["answers"]["rows"] for n, c in (results.get("conditions") or {}).items() if c.get("answers")}
    rows, domains = [], sorted({r["domain"] for answers in conditions.values() for r in answers})
    for name, answers in conditions.items():
        mixed = conditions.get("fl-mixed" if name.startswith("fl-") else "mixed")
        if mixed is None or name in ("mixed", "fl-mixed", "base") or len(mixed) != len(answers):
            continue
        cells = []
        for domain in (*domains, None):
            pairs = [(float(a["passed"]), float(b["passed"])) for a, b in zip(answers, mixed)
                     if domain is None or a["domain"] == domain]
            diff = paired_difference([a for a, _ in pairs], [b for _, b in pairs])
            cells.append("–" if diff is None else
                         f"{100 * diff[0]:+.1f} ({100 * (diff[0] - diff[1]):+.1f} to {100 * (diff[0] + diff[1]):+.1f})")
        rows.append([name] + cells)
    if not rows:
        return None
    return Table("Answer quality against training on all records", ["condition", *domains, "all domains"], rows,
                 "Points of the all-checks pass rate above mixed's, answer by answer, with the 95% interval of the "
                 "paired difference over the test questions of this one seed: an interval that holds 0 is noise.")


# Answers shown side by side per domain, and the conditions shown (in this order, those that ran).
EXAMPLES_PER_DOMAIN = 2


def examples_table(results: Mapping) -> Table | None:
    """For each domain, a few test questions with the answers of mixed, the selections and the oracle.

    Questions where mixed and the oracle answered differently come first: they show what clean data changed.
    """
    conditions = {n: c["answers"]["rows"] for n, c in (results.get("conditions") or {}).items()
                  if c.get("answers") and n != "base"}
    if "mixed" not in conditions and "fl-mixed" not in conditions:
        return None
    names = list(conditions)
    first = conditions[names[0]]
    oracle = conditions.get("oracle") or conditions.get("fl-oracle")
    mixed = conditions.get("mixed") or conditions.get("fl-mixed")
    rows = []
    for domain in sorted({r["domain"] for r in first}):
        indices = [i for i, r in enumerate(first) if r["domain"] == domain]
        differ = [i for i in indices if oracle is not None and oracle[i]["answer"] != mixed[i]["answer"]]
        for i in (differ + [i for i in indices if i not in differ])[:EXAMPLES_PER_DOMAIN]:
            rows.append([domain, _short(first[i].get("question", first[i]["id"]))] + [
                ("✓ " if conditions[n][i]["passed"] else "✗ ") + _short(conditions[n][i]["answer"]) for n in names])
    return Table("Answers side by side", ["domain", "question"] + names, rows,
                 "Greedy answers to held-out test questions; ✓ passes every check, ✗ fails one. Questions where "
                 "training on clean records changed the answer come first.", text=True)


def _short(text: str, limit: int = 220) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _total(entry: Mapping):
    """Records in a silo: ``total`` in results.json, ``records`` in :func:`clues.metrics.selection_metrics`."""
    return entry.get("total", entry.get("records"))


def clean_fractions(results: Mapping, score_data: Mapping | None) -> dict[str, float]:
    """True clean fraction per silo: from the labels (or labelled histogram) in ``score_data``, else
    from the selection entry.

    An entry may carry the clean count (``"clean"``, as :func:`clues.metrics.selection_metrics` gives
    it); otherwise the fraction follows from kept * precision / recall (the clean records kept over
    the share of clean records kept), unknown when recall is 0 or the metrics are missing.
    """
    fractions = {}
    for silo, data in (score_data or {}).items():
        clean, hist = data.get("clean"), data.get("histogram") or {}
        if clean:
            fractions[silo] = sum(bool(c) for c in clean) / len(clean)
        elif "clean" in hist and sum(hist.get("all", [])):
            fractions[silo] = sum(hist["clean"]) / sum(hist["all"])
    for silos in (results.get("selection") or {}).values():
        for silo, s in silos.items():
            if silo in fractions:
                continue
            precision, recall, kept = (s.get(k) for k in ("precision", "recall", "kept"))
            total = _total(s)
            if isinstance(s.get("clean"), int) and total:
                fractions[silo] = s["clean"] / total
            elif precision is not None and recall and kept is not None and total:
                fractions[silo] = kept * precision / recall / total
    return fractions


def selection_tables(results: Mapping, score_data: Mapping | None = None) -> list[Table]:
    """One table per selection method: what each silo kept, at which tau, and how well when labels exist."""
    clean = clean_fractions(results, score_data)
    tables = []
    for method, silos in (results.get("selection") or {}).items():
        rows = []
        for silo, s in silos.items():
            kept, total = s.get("kept"), _total(s)
            rows.append(
                [silo, f"{kept}/{total}", fmt_pct(kept / total if total else None), fmt_pct(clean.get(silo)), fmt_num(s.get("tau"), 4)]
                + [fmt_num(s.get(m), 3) for m in SELECTION_METRICS]
            )
        tables.append(Table(
            f"Selection: {method}",
            ["silo", "kept", "kept %", "clean %", "tau"] + list(SELECTION_METRICS),
            rows,
            "High quality (clean) is the positive class; – where labels were not given.",
        ))
    return tables


def corruption_table(results: Mapping) -> Table | None:
    """Per selection method and corruption type: how well each kind of bad record is found.

    AUROC (clean above that kind) and AUPRC (finding that kind first; its chance level is the base
    rate) are means over the silos that hold the kind; recall is the share of that kind's records
    dropped, pooled over silos. From the silos' aggregate replies: no record crosses for this.
    """
    rows = []
    for method, silos in (results.get("selection") or {}).items():
        by_kind: dict[str, list[dict]] = {}
        for s in silos.values():
            for kind, entry in (s.get("by_corruption") or {}).items():
                by_kind.setdefault(kind, []).append(entry)
        for kind, entries in sorted(by_kind.items()):
            mean = lambda key: _mean([e.get(key) for e in entries])  # noqa: E731
            count = sum(e["count"] for e in entries)
            dropped = sum((e.get("recall") or 0.0) * e["count"] for e in entries)
            rows.append([method, kind, str(count), str(len(entries)), fmt_num(mean("auroc"), 3), fmt_num(mean("auprc"), 3),
                         fmt_num(mean("base_rate"), 3), fmt_pct(dropped / count if count else None)])
    if not rows:
        return None
    return Table(
        "Per corruption type",
        ["method", "corruption", "records", "silos", "AUROC", "AUPRC", "AUPRC by chance", "dropped"],
        rows,
        "Within each silo, the clean records against one kind of corrupted record; AUROC and AUPRC are means "
        "over the silos holding that kind (AUPRC: that kind found first, by chance equal to its share); "
        "dropped = the share of that kind's records the selection removed (its recall), pooled over silos.",
    )


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def pooled_selection(results: Mapping, condition: str) -> dict | None:
    """Selection metrics of one condition over all silos pooled (counts summed), AUROC the mean within-silo AUROC.

    ``mixed`` keeps everything and ``oracle`` exactly the clean records, so their rows follow from the
    silos' clean counts; selection methods from their silos' confusion counts. None without labels.
    """
    from clues.metrics import safe_ratio

    selection = results.get("selection") or {}
    any_method = next(iter(selection.values()), {})
    reference = condition.removeprefix("fl-")
    if reference in ("mixed", "oracle"):
        if not any_method or any("clean_total" not in s for s in any_method.values()):
            return None
        clean = sum(s["clean_total"] for s in any_method.values())
        total = sum(_total(s) for s in any_method.values())
        tp, fp, tn = clean, (total - clean if reference == "mixed" else 0), (0 if reference == "mixed" else total - clean)
        fn, auroc = 0, None
    elif condition in selection and all("tp" in s for s in selection[condition].values()):
        silos = selection[condition].values()
        tp, fp, fn, tn = (sum(s[k] for s in silos) for k in ("tp", "fp", "fn", "tn"))
        aurocs = [s["auroc"] for s in silos if s.get("auroc") is not None]
        auroc = sum(aurocs) / len(aurocs) if aurocs else None
    else:
        return None
    total = tp + fp + fn + tn
    return {"precision": safe_ratio(tp, tp + fp), "recall": safe_ratio(tp, tp + fn), "f1": safe_ratio(2 * tp, 2 * tp + fp + fn),
            "accuracy": safe_ratio(tp + tn, total), "auroc": auroc, "kept": safe_ratio(tp + fp, total)}


def methods_table(results: Mapping) -> Table | None:
    """The benchmark table: per condition, selection quality (pooled over silos), the collaborative
    model's test loss per domain, the oracle gain recovered and the scoring wall time."""
    conditions = results.get("conditions") or {}
    if len(results.get("selection") or {}) < 2:  # a plain run: the loss and selection tables say it all
        return None
    domains = _domains(conditions)
    seconds = results.get("scoring_seconds") or {}
    has_answers = any(c.get("answers") for c in conditions.values())
    rows = []
    for name, c in conditions.items():
        if name == "base":
            continue
        pooled = pooled_selection(results, name) or {}
        losses = c.get("test_loss", {})
        answered = (c.get("answers") or {}).get("rates", {}).get("passed", {}).get("mean")
        rows.append([name] + [fmt_num(pooled.get(m), 3) for m in SELECTION_METRICS] + [fmt_pct(pooled.get("kept"))]
                    + ([fmt_pct(answered)] if has_answers else [])
                    + [fmt_num(losses.get(d)) for d in domains]
                    + [fmt_num(c.get("mean_test_loss")), fmt_pct(c.get("oracle_gain_recovered"))]
                    + ([fmt_num(seconds.get(name), 1)] if seconds else []))
    return Table(
        "Methods compared",
        ["method"] + list(SELECTION_METRICS) + ["kept %"] + (["answers ok"] if has_answers else [])
        + [f"loss {d}" for d in domains]
        + ["mean loss", "oracle gain"] + (["scoring s"] if seconds else []),
        rows,
        "Selection metrics pooled over all silos (clean = positive class; AUROC is the mean within-silo AUROC); "
        + ("answers ok = share of the merged model's answers to the test questions that pass every check; " if has_answers else "")
        + "test loss of the merged model per domain (lower is better)"
        + ("; scoring s = wall time of the method's scoring in all silos together." if seconds
           else "; wall times, the scoring time of each method included, are in timing.json."),
    )


def roc_by_method(results: Mapping) -> dict[str, list[float]]:
    """``{method: mean TPR curve}``: the silos' ROC curves (TPR on one FPR grid) averaged vertically."""
    curves = {}
    for method, silos in (results.get("scores") or {}).items():
        rocs = [s["roc"] for s in silos.values() if isinstance(s, Mapping) and s.get("roc")]
        if rocs:
            curves[method] = [sum(values) / len(values) for values in zip(*rocs)]
    return curves


def timing_table(results: Mapping) -> Table | None:
    timing = results.get("timing") or {}
    if not timing:
        return None
    rows = [[stage, f"{seconds:.1f}"] for stage, seconds in timing.items()]
    if "total" not in timing:
        rows.append(["total", f"{sum(timing.values()):.1f}"])
    return Table("Timing", ["stage", "seconds"], rows)


def federated_rounds_table(results: Mapping) -> Table | None:
    """Global test loss after each FedAvg round, one column per federated condition."""
    curves = (results.get("federated") or {}).get("curves") or {}
    if not curves:
        return None
    rounds = sorted({p["round"] for points in curves.values() for p in points})
    by_round = {c: {p["round"]: p.get("mean_test_loss") for p in points} for c, points in curves.items()}
    rows = [[str(r)] + [fmt_num(by_round[c].get(r)) for c in curves] for r in rounds]
    fed = results["federated"]
    note = (f"Macro-mean test loss of the global adapter after each round ({fed.get('engine', '?')} engine, "
            f"{len(fed.get('silos', []))} silos). ")
    failures = fed.get("failures") or []
    if failures:
        note += f"{len(failures)} silo replies were missing (failed or timed out); those rounds went on without them."
    return Table("Federated: global test loss per round", ["round"] + list(curves), rows, note)


# Merging-mode condition -> its federated counterpart.
_PAIRS = (("mixed", "fl-mixed"), ("clues", "fl-clues"), ("oracle", "fl-oracle"))


def merging_vs_federated_table(results: Mapping) -> Table | None:
    """Merging and federated side by side, when one results.json holds both (``clues federate --compare``)."""
    conditions = results.get("conditions") or {}
    pairs = [(m, f) for m, f in _PAIRS if m in conditions and f in conditions]
    if not pairs:
        return None
    rows = []
    for merging, federated in pairs:
        a, b = conditions[merging], conditions[federated]
        rows.append([merging, fmt_num(a.get("mean_test_loss")), fmt_num(b.get("mean_test_loss")),
                     fmt_pct(a.get("oracle_gain_recovered")), fmt_pct(b.get("oracle_gain_recovered"))])
    return Table("Merging vs. federated", ["condition", "merging loss", "federated loss", "merging gain", "federated gain"],
                 rows, "Mean test loss and oracle gain recovered of each condition, merged adapters (TIES) vs. FedAvg.")


def all_tables(results: Mapping, score_data: Mapping | None = None) -> list[Table]:
    tables = [methods_table(results), answers_table(results), answer_gain_table(results), examples_table(results), loss_table(results),
              preference_table(results), gain_table(results), accuracy_table(results),
              federated_rounds_table(results), merging_vs_federated_table(results)]
    tables += selection_tables(results, score_data)
    tables.append(corruption_table(results))
    tables.append(timing_table(results))
    return [t for t in tables if t is not None]


# --- plots ----------------------------------------------------------------------------------------


def kept_points(results: Mapping, score_data: Mapping | None) -> dict[str, dict[str, tuple[float, float]]]:
    """``{method: {silo: (clean fraction, kept fraction)}}`` for the silos whose clean fraction is known."""
    clean = clean_fractions(results, score_data)
    points = {}
    for method, silos in (results.get("selection") or {}).items():
        mine = {silo: (clean[silo], s["kept"] / _total(s)) for silo, s in silos.items() if silo in clean and _total(s)}
        if mine:
            points[method] = mine
    return points


def write_plots(results: Mapping, out_dir: str | os.PathLike, score_data: Mapping | None = None) -> dict[str, Path]:
    """Draw the plots the data allows; return ``{caption: path}`` in report order."""
    out_dir = Path(out_dir)
    written = {}
    if score_data:
        plots.score_histograms(score_data, out_dir / SCORE_PLOT)
        written["Score distribution per silo, threshold tau dashed"] = out_dir / SCORE_PLOT
    losses = {n: c["test_loss"] for n, c in (results.get("conditions") or {}).items() if c.get("test_loss")}
    if losses:
        plots.loss_bars(losses, out_dir / LOSS_PLOT)
        written["Test loss per domain by condition"] = out_dir / LOSS_PLOT
    curves = (results.get("federated") or {}).get("curves")
    if curves:
        plots.round_curves(curves, out_dir / ROUNDS_PLOT)
        written["Federated: global test loss after each round"] = out_dir / ROUNDS_PLOT
    roc = roc_by_method(results)
    if roc:
        plots.roc_curves(roc, out_dir / ROC_PLOT)
        written["ROC curve of each method (silos averaged)"] = out_dir / ROC_PLOT
    points = kept_points(results, score_data)
    if points:
        plots.kept_vs_clean(points, out_dir / KEPT_PLOT)
        written["Kept fraction vs. true clean fraction per silo"] = out_dir / KEPT_PLOT
    return written


# --- renderers ------------------------------------------------------------------------------------


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def table_markdown(table: Table) -> str:
    lines = [f"## {table.title}", ""]
    if table.note:
        lines += [table.note, ""]
    lines.append("| " + " | ".join(_md_cell(h) for h in table.headers) + " |")
    lines.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(table.headers))) + "|")
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in table.rows]
    return "\n".join(lines) + "\n"


def table_html(table: Table) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in table.headers)
    body = "".join("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>\n" for row in table.rows)
    note = f'<p class="note">{esc(table.note)}</p>\n' if table.note else ""
    kind = ' class="text"' if table.text else ""
    return f"<h2>{esc(table.title)}</h2>\n{note}<table{kind}>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>\n"


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1100px;
       padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: right; }
th:first-child, td:first-child, table.text td, table.text th { text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
p.note { color: #555; font-size: 0.9em; }
figure { margin: 1em 0 2em; }
figure img { max-width: 100%; }
pre { background: #f7f7f7; padding: 1em; overflow-x: auto; }
"""

TITLE = "CLUES run report"


def render_markdown(tables: list[Table], figures: Mapping[str, Path], config, title: str = TITLE,
                    verdict: list[str] = ()) -> str:
    parts = [f"# {title}\n"]
    if verdict:
        parts.append("## Verdict\n\n" + "\n".join(f"- {line}" for line in verdict) + "\n")
    parts += [table_markdown(t) for t in tables]
    if figures:
        parts.append("## Plots\n")
        parts += [f"![{caption}]({path.name})\n\n*{caption}*\n" for caption, path in figures.items()]
    if config:
        parts.append("## Configuration\n\n```json\n" + json.dumps(config, indent=2, ensure_ascii=False, sort_keys=True) + "\n```\n")
    return "\n".join(parts)


def _strong(text: str) -> str:
    """Markdown ``**bold**`` (the verdict's condition names) as HTML."""
    return re.sub(r"[*][*](.+?)[*][*]", r"<strong>\1</strong>", text)


def render_html(tables: list[Table], figures: Mapping[str, Path], config, title: str = TITLE,
                verdict: list[str] = ()) -> str:
    parts = [
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n",
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<h1>{html.escape(title)}</h1>\n",
    ]
    if verdict:
        items = "".join(f"<li>{_strong(html.escape(line))}</li>\n" for line in verdict)
        parts.append(f"<h2>Verdict</h2>\n<ul>\n{items}</ul>\n")
    parts += [table_html(t) for t in tables]
    if figures:
        parts.append("<h2>Plots</h2>\n")
    for caption, path in figures.items():
        data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        alt = html.escape(caption)
        parts.append(f'<figure><img alt="{alt}" src="data:image/png;base64,{data}">'
                     f"<figcaption>{alt}</figcaption></figure>\n")
    if config:
        text = json.dumps(config, indent=2, ensure_ascii=False, sort_keys=True)
        parts.append(f"<h2>Configuration</h2>\n<pre>{html.escape(text)}</pre>\n")
    parts.append("</body>\n</html>\n")
    return "".join(parts)


def write_report(results: Mapping, out_dir: str | os.PathLike, score_data: Mapping | None = None) -> dict[str, Path]:
    """Write ``report.md``, ``report.html`` and the PNG plots into ``out_dir``; return their paths.

    ``results`` follows the ``results.json`` schema (conditions, selection, timing, config; missing
    parts are left out of the report). ``score_data`` (``{silo: {"scores": [...], "clean": [...] or
    None, "tau": float}}``) adds the score histograms and the true clean fractions.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tables = all_tables(results, score_data)
    figures = write_plots(results, out_dir, score_data)
    config = results.get("config")
    lines = verdict(results) + [f"warning: {line}" for line in results.get("warnings") or ()]
    paths = {"markdown": out_dir / "report.md", "html": out_dir / "report.html"}
    with atomic_open(paths["markdown"]) as handle:
        handle.write(render_markdown(tables, figures, config, verdict=lines))
    with atomic_open(paths["html"]) as handle:
        handle.write(render_html(tables, figures, config, verdict=lines))
    paths.update({path.stem: path for path in figures.values()})
    return paths


# Wall times: they differ on every run, so they live in timing.json, never in results.json or the
# report, and a rerun with the same seed writes byte-identical results, reports and plots.
TIMING_KEYS = ("timing", "scoring_seconds")
TIMING_FILE = "timing.json"


def split_timing(results: Mapping) -> tuple[dict, dict]:
    """``(results without wall times, the wall times)``."""
    return ({k: v for k, v in results.items() if k not in TIMING_KEYS},
            {k: results[k] for k in TIMING_KEYS if k in results})


def write_results(results: Mapping, out_dir: str | os.PathLike, score_data: Mapping | None = None) -> None:
    """``results.json`` and the report (reproducible), and ``timing.json`` (the wall times)."""
    from clues.io import write_json

    reproducible, timing = split_timing(results)
    write_json(Path(out_dir) / "results.json", reproducible)
    write_json(Path(out_dir) / TIMING_FILE, timing)
    write_report(reproducible, out_dir, score_data)


def print_summary(results: Mapping, console, score_data: Mapping | None = None) -> None:
    """Print the test-loss table and the per-silo selection tables to a rich console."""
    from rich.table import Table as RichTable

    methods = methods_table(results)  # a benchmark: one row per method replaces the per-silo tables
    wanted = [methods or loss_table(results), answers_table(results), gain_table(results), merging_vs_federated_table(results)]
    if methods is None:
        wanted += selection_tables(results, score_data)
    wanted.append(corruption_table(results))
    wanted.append(timing_table(results))  # wall times: on the console and in timing.json, not in the report
    for table in (t for t in wanted if t is not None):
        rich_table = RichTable(title=table.title, title_justify="left")
        for i, header in enumerate(table.headers):
            rich_table.add_column(header, justify="left" if i == 0 else "right", no_wrap=i == 0)
        for row in table.rows:
            rich_table.add_row(*row)
        console.print(rich_table)
