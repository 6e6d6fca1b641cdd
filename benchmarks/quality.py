"""Does selection give a better model? `clues bench` on several benchmark seeds, summarised with intervals.

For each seed this runs (or resumes) ``clues bench --scenario S --model M --methods METHODS --seed N``
into ``WORK/<scenario>-seed<N>``, then reads every ``results.json`` and reports, per condition:
the quality probe (real answer preferred over a corrupted one, per corruption type), multiple-choice
accuracy and mean test loss, each as a mean over seeds with a 95% t-interval; the paired difference
of every condition against ``mixed`` (same seed, same test questions) with its t-interval over
seeds; the oracle gain recovered on the probe; and the selection of every method (within-silo
AUROC overall and per corruption type, clean recall, precision and its margin over the clean share).

    python benchmarks/quality.py --model default --scenario mixed --methods clues,clues+perplexity+tail,random --seeds 4,5,6

Seeds 1-3 of mixed-small are design seeds (benchmarks/signals.py, design_study.py) and 0 is the
demo's: report on others. ``--merge``/``--merge-space`` set the merge, ``--collab federated`` runs
FedAvg instead (its ``fl-x`` conditions are read as ``x``). Writes
``benchmarks/results/quality-<scenario>-<model>[-<regime>].json`` and prints Markdown.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import interval, write_result  # noqa: E402

KINDS = ("incomplete_answer", "mismatched_answer", "mixed_language", "random_noise")


def run_bench(args, seed: int) -> dict:
    merge = [flag for name, value in (("--merge", args.merge), ("--merge-space", args.merge_space)) if value
             for flag in (name, value)]
    out = Path(args.work) / f"{args.scenario}-{args.model}{regime_name(args)}-seed{seed}"
    results = out / ("run" if args.collab == "merge" else "federated") / "results.json"
    if not results.is_file():
        subprocess.run(["clues", "bench", "--scenario", args.scenario, "--model", args.model, "--methods", args.methods,
                        "--seed", str(seed), "--out", str(out), "--collab", args.collab, *merge], check=True)
    return json.loads(results.read_text(encoding="utf-8"))


def regime_name(args) -> str:
    """What tells this regime's runs and result file apart: ``-federated``, ``-linear-delta``, or nothing."""
    return "".join(f"-{value}" for value in (args.merge, args.merge_space, args.collab != "merge" and args.collab) if value)


def condition_values(results: dict) -> dict[str, dict[str, float]]:
    """``{condition: {metric: value}}`` of one seed (federated ``fl-x`` read as ``x``)."""
    out = {}
    for name, c in results["conditions"].items():
        name = name.removeprefix("fl-")
        row = {"test loss": c.get("mean_test_loss")}
        mcq = c.get("mcq_accuracy") or {}
        if mcq:
            row["MCQ accuracy"] = statistics.fmean(mcq.values())
        probe = c.get("preference") or {}
        if probe:
            row["probe"] = probe["mean"]
            row.update({f"probe {k}": v for k, v in probe["accuracy"].items()})
        out[name] = row
    return out


def selection_values(results: dict) -> dict[str, dict[str, float]]:
    """``{method: {metric: mean over silos}}`` of one seed (AUROC per corruption from the score replies)."""
    out = {}
    for method, silos in (results.get("selection") or {}).items():
        method = method.removeprefix("fl-")
        rows = list(silos.values())
        clean_share = statistics.fmean(s["clean_total"] / s["total"] for s in rows)
        row = {"AUROC": statistics.fmean(s["auroc"] for s in rows if s.get("auroc") is not None),
               "recall": statistics.fmean(s["recall"] for s in rows if s.get("recall") is not None),
               "kept": statistics.fmean(s["kept"] / s["total"] for s in rows)}
        precisions = [s["precision"] - s["clean_total"] / s["total"] for s in rows if s.get("precision") is not None]
        row["precision - base"] = statistics.fmean(precisions) if precisions else None
        row["worst recall"] = min(s["recall"] for s in rows if s.get("recall") is not None)
        row["clean share"] = clean_share
        for kind in KINDS:
            values = [s["by_corruption"][kind]["auroc"] for s in rows
                      if kind in (s.get("by_corruption") or {}) and s["by_corruption"][kind].get("auroc") is not None]
            if values:
                row[f"AUROC {kind}"] = statistics.fmean(values)
        out[method] = row
    return out


def summarise(per_seed: list[dict]) -> dict:
    """``{name: {metric: (mean, half-width)}}`` over seeds (a metric missing on a seed is left out there)."""
    names = list(dict.fromkeys(n for seed in per_seed for n in seed))
    out = {}
    for name in names:
        metrics = list(dict.fromkeys(m for seed in per_seed for m in seed.get(name, {})))
        out[name] = {}
        for metric in metrics:
            values = [seed[name][metric] for seed in per_seed if seed.get(name, {}).get(metric) is not None]
            if values:
                out[name][metric] = interval(values)
    return out


def paired(per_seed: list[dict], reference: str = "mixed") -> dict:
    """Per condition and metric: the difference to ``reference`` on the same seed, as a t-interval over seeds."""
    deltas = [{name: {m: v - seed[reference][m] for m, v in row.items()
                      if v is not None and seed[reference].get(m) is not None}
               for name, row in seed.items() if name != reference} for seed in per_seed if reference in seed]
    return summarise(deltas)


def pooled_probe(results: list[dict], reference: str = "mixed") -> dict:
    """Per condition: the paired probe difference to ``reference`` over the pairs of every seed pooled
    (``clues.stats.paired_difference``: mean and 95% half-width), next to the coarser interval over seeds."""
    from clues.stats import paired_difference

    wins: dict[str, list[float]] = {}
    for seed in results:
        for name, c in seed["conditions"].items():
            wins.setdefault(name.removeprefix("fl-"), []).extend((c.get("preference") or {}).get("wins") or [])
    base = wins.get(reference) or []
    return {name: paired_difference(w, base) for name, w in wins.items()
            if name != reference and w and len(w) == len(base)}


def gain_recovered(pooled: dict) -> dict:
    """Oracle gain recovered on the probe: (method - mixed) / (oracle - mixed) of the pooled paired differences,
    given only when the oracle's own gain is more than noise (its pooled 95% interval excludes zero)."""
    oracle = pooled.get("oracle")
    if oracle is None or not oracle[0] - oracle[1] > 0:
        return {}
    return {name: diff[0] / oracle[0] for name, diff in pooled.items() if diff and name not in ("oracle", "base")}


def fmt(value: tuple[float, float] | None, percent: bool = False, signed: bool = False) -> str:
    if value is None:
        return "–"
    mean, half = value
    scale = 100 if percent else 1
    sign = "+" if signed else ""
    return f"{scale * mean:{sign}.1f} ± {scale * half:.1f}" if percent else f"{mean:{sign}.3f} ± {half:.3f}"


def markdown(summary: dict) -> str:
    lines = []
    conditions, deltas, selection = summary["conditions"], summary["vs_mixed"], summary["selection"]
    cols = ["probe", *[f"probe {k}" for k in KINDS], "MCQ accuracy"]
    lines.append("| condition | test loss | " + " | ".join(c.replace("probe ", "probe: ").replace("_answer", "") for c in cols) + " |")
    lines.append("|---" * (len(cols) + 2) + "|")
    for name, row in conditions.items():
        lines.append(f"| {name} | {fmt(row.get('test loss'))} | " + " | ".join(fmt(row.get(c), percent=True) for c in cols) + " |")
    lines.append("\nDifference to mixed, same seed (95% t-interval over seeds; probe pooled: 95% interval over the "
                 "probe pairs of all seeds):\n")
    lines.append("| condition | test loss | probe | probe pooled | MCQ accuracy |\n|---|---|---|---|---|")
    for name, row in deltas.items():
        lines.append(f"| {name} | {fmt(row.get('test loss'), signed=True)} | {fmt(row.get('probe'), True, True)} | "
                     f"{fmt(summary['pooled'].get(name), True, True)} | {fmt(row.get('MCQ accuracy'), True, True)} |")
    if summary["gain_recovered"]:
        shown = ", ".join(f"{n} {('–' if g is None else f'{g:.2f}')}" for n, g in summary["gain_recovered"].items())
        lines.append(f"\nOracle gain recovered on the probe (ratio of the pooled differences to mixed): {shown}\n")
    kinds = [f"AUROC {k}" for k in KINDS]
    lines.append("| method | AUROC | " + " | ".join(k.replace("AUROC ", "").replace("_answer", "") for k in kinds)
                 + " | kept | recall (worst silo) | precision - clean share |")
    lines.append("|---" * (len(kinds) + 5) + "|")
    for name, row in selection.items():
        lines.append(f"| {name} | {fmt(row.get('AUROC'))} | " + " | ".join(fmt(row.get(k)) for k in kinds)
                     + f" | {fmt(row.get('kept'), True)} | {fmt(row.get('recall'))} ({fmt(row.get('worst recall'))})"
                     + f" | {fmt(row.get('precision - base'), signed=True)} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--scenario", default="mixed-small")
    parser.add_argument("--methods", default="clues,clues+perplexity+tail")
    parser.add_argument("--collab", default="merge", choices=("merge", "federated"), help="clues bench --collab")
    parser.add_argument("--merge", default=None, help="clues bench --merge (default: the run's, TIES)")
    parser.add_argument("--merge-space", default=None, help="clues bench --merge-space (default: factor)")
    parser.add_argument("--seeds", default="4,5,6")
    parser.add_argument("--work", default="/tmp/clues-quality")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    results = [run_bench(args, int(seed)) for seed in args.seeds.split(",")]
    per_seed = [condition_values(r) for r in results]
    pooled = pooled_probe(results)
    summary = {"conditions": summarise(per_seed), "vs_mixed": paired(per_seed), "pooled": pooled,
               "gain_recovered": gain_recovered(pooled), "selection": summarise([selection_values(r) for r in results])}
    print(markdown(summary))
    out = write_result(args.out or HERE / "results" / f"quality-{args.scenario}-{args.model}{regime_name(args)}.json", "quality", "quality.py", argv,
                       seeds=args.seeds, per_seed=per_seed, summary=summary)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
