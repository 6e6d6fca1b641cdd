"""Choose a score and a threshold rule on design seeds, from the per-record values `signals.py` saved.

No model runs here: ``benchmarks/results/signals-design.json`` holds, per seed and silo, every
feature of every record and of the silo's own-domain anchors, plus the labels. For each candidate
score (a single feature, or the mean of several features' within-silo percentiles) this prints the
mean within-silo AUROC (overall and per corruption type) and, for each threshold rule, the clean
recall, the precision and its margin over the silo's clean share (the issue's target: recall >= 0.95
with precision >= base rate + 0.15).

    python benchmarks/design_study.py benchmarks/results/signals-design.json [more signals outputs...]

The seeds in that file are design seeds: whatever is chosen here is reported on other seeds.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))
from common import interval  # noqa: E402

import torch  # noqa: E402

from clues.baselines.fusion import fuse  # noqa: E402
from clues.metrics import roc_auc  # noqa: E402


def fused(silo: dict, names: tuple[str, ...]) -> tuple[list[float], list[float]]:
    """(records, anchors) fused over ``names`` exactly as the shipped fused methods do."""
    values = silo["values"]
    scores = fuse([{part: torch.tensor(values[part][n], dtype=torch.float64) for part in ("data", "anchor")}
                   for n in names])
    return scores["data"].tolist(), scores["anchor"].tolist()


def rules(anchors: list[float]) -> dict[str, float]:
    a = sorted(anchors)
    mean, sd = statistics.fmean(a), statistics.stdev(a)
    return {"anchor mean": mean, "anchor min": a[0], "anchor q0.25": a[len(a) // 4],
            "mean-1sd": mean - sd, "mean-1.645sd": mean - 1.645 * sd, "mean-2sd": mean - 2 * sd}


def study(runs: list[dict], names: tuple[str, ...]) -> dict:
    per_seed_auc, per_kind, outcome, placement = [], {}, {}, []
    for run in runs:
        aucs = []
        kinds_seed = {}
        for silo in run["silos"].values():
            clean = silo["values"]["clean"]
            kinds = silo["values"]["corruption"]
            if len(names) == 1:
                data, anchor = silo["values"]["data"][names[0]], silo["values"]["anchor"][names[0]]
            else:
                data, anchor = fused(silo, names)
            aucs.append(roc_auc(data, clean))
            for kind in sorted({k for k in kinds if k}):
                idx = [i for i, (c, k) in enumerate(zip(clean, kinds)) if c or k == kind]
                kinds_seed.setdefault(kind, []).append(roc_auc([data[i] for i in idx], [clean[i] for i in idx]))
            base = sum(clean) / len(clean)
            # exchangeability check: where anchors sit among the silo's clean records (0.5 = alike)
            clean_scores = [s for s, c in zip(data, clean) if c]
            placement.append(statistics.fmean(sum(c < a for c in clean_scores) / len(clean_scores) for a in anchor))
            for rule, tau in rules(anchor).items():
                kept = [s >= tau for s in data]
                tp = sum(k and c for k, c in zip(kept, clean))
                recall = tp / sum(clean)
                precision = tp / sum(kept) if any(kept) else base
                outcome.setdefault(rule, []).append((recall, precision - base, sum(kept) / len(kept)))
        per_seed_auc.append(statistics.fmean(aucs))
        for kind, values in kinds_seed.items():
            per_kind.setdefault(kind, []).append(statistics.fmean(values))
    return {"auroc": interval(per_seed_auc), "anchor_placement": statistics.fmean(placement), "kinds": {k: interval(v) for k, v in per_kind.items()},
            "rules": {r: (statistics.fmean(x[0] for x in v), min(x[0] for x in v), statistics.fmean(x[1] for x in v),
                          statistics.fmean(x[2] for x in v)) for r, v in outcome.items()}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", default=[str(HERE / "results" / "signals-design.json")],
                        help="signals.py outputs; their seeds are pooled")
    parser.add_argument("--max-fuse", type=int, default=3)
    args = parser.parse_args(argv)
    runs = [run for path in args.paths for run in json.loads(Path(path).read_text(encoding="utf-8"))["runs"]]
    features = sorted(next(iter(runs[0]["silos"].values()))["values"]["data"])
    candidates = [c for k in range(1, args.max_fuse + 1) for c in itertools.combinations(features, k)]
    results = {c: study(runs, c) for c in candidates}
    ranked = sorted(results.items(), key=lambda kv: -kv[1]["auroc"][0])
    kinds = sorted(next(iter(results.values()))["kinds"])
    print("score" + " " * 22 + "AUROC        " + "  ".join(k[:10] for k in kinds))
    for names, r in ranked[:15]:
        shown = "  ".join(f"{r['kinds'][k][0]:.3f}     " for k in kinds)
        print(f"{'+'.join(names):<26} {r['auroc'][0]:.3f}±{r['auroc'][1]:.3f}  {shown}")
    for names, r in ranked[:5] + [(c, results[c]) for c in candidates if c in (("clues",), ("loss",))]:
        print(f"\n{'+'.join(names)}: anchors sit above {r['anchor_placement']:.2f} of the clean records (0.5 = exchangeable)")
        print("rule -> mean recall, worst recall, precision - base, kept share")
        for rule, (recall, worst, margin, kept) in r["rules"].items():
            print(f"    {rule:<14} {recall:.3f}  {worst:.3f}  {margin:+.3f}  {kept:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
