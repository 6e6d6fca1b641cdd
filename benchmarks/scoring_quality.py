"""Selection quality of the CLUES score on a benchmark with known pollution (default: ``finance``).

For every silo: fine-tune LoRA on its mixed records (``clues train``), score its records and the
public anchors on its checkpoints (``clues score``), then measure precision / recall / F1 / accuracy
(clean = positive) and ROC AUC against ``labels.jsonl``, with a per-silo tau (each silo's anchors on
its own checkpoints) and a global tau (all anchor scores pooled).

    python benchmarks/scoring_quality.py --scenario finance --model default
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", default="finance")
    parser.add_argument("--model", default="default")
    parser.add_argument("--work", default="/tmp/clues-quality", help="where the benchmark, runs and scores go")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--precondition", default="adam")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", default=str(HERE / "results" / "scoring_quality.json"))
    args = parser.parse_args(argv)

    import torch

    from clues.data.records import load_records
    from clues.metrics import evaluate, load_labels
    from clues.scoring.engine import ScoreSettings, score_run
    from clues.select import silo_thresholds
    from clues.train import TrainConfig, train

    work = Path(args.work)
    bench = work / "bench"
    if not (bench / "labels.jsonl").is_file():
        subprocess.run([sys.executable, "-m", "clues.cli", "data", "build", "--scenario", args.scenario,
                        "--out", str(bench), "--force"], check=True)
    labels = load_labels(bench / "labels.jsonl")
    validation = load_records(bench / "validation.jsonl")
    anchors = load_records(bench / "anchor.jsonl")
    scores, anchor_scores, timing = {}, {}, {}
    for silo_file in sorted((bench / "silos").glob("*.jsonl")):
        silo = silo_file.stem
        records = load_records(silo_file)
        started = time.perf_counter()
        config = TrainConfig(model=args.model, epochs=args.epochs, lr=args.lr, max_length=args.max_length)
        train(config, records, work / "runs" / silo)
        trained = time.perf_counter()
        result = score_run(work / "runs" / silo, {"data": records, "anchor": anchors}, validation,
                           ScoreSettings(precondition=args.precondition, batch_size=args.batch_size))
        scored = time.perf_counter()
        scores.update({r.id: float(s) for r, s in zip(records, result.total("data").tolist())})
        anchor_scores[silo] = result.total("anchor").tolist()
        timing[silo] = {"train_s": round(trained - started, 1), "score_s": round(scored - trained, 1)}
        print(f"{silo}: trained in {timing[silo]['train_s']}s, scored in {timing[silo]['score_s']}s", flush=True)

    report = {"scenario": args.scenario, "model": args.model, "precondition": args.precondition,
              "epochs": args.epochs, "lr": args.lr, "max_length": args.max_length, "threads": torch.get_num_threads(),
              "timing": timing}
    for mode in ("per-silo", "global"):
        taus = silo_thresholds(anchor_scores, "mean", mode)
        report[mode] = {"tau": taus, **evaluate(labels, scores=scores, tau=taus)}
    print(f"\n{'silo':10s} {'tau':>6s} {'clean':>6s} {'kept':>5s} {'prec':>6s} {'recall':>6s} {'f1':>6s} {'acc':>6s} {'auroc':>6s}")
    for mode in ("per-silo", "global"):
        print(f"-- tau {mode}")
        rows = list(report[mode]["silos"].items()) + [("overall", report[mode]["overall"])]
        for name, m in rows:
            tau = report[mode]["tau"].get(name)
            f = lambda v: "  n/a" if v is None else f"{v:6.3f}"  # noqa: E731
            print(f"{name:10s} {'' if tau is None else f'{tau:6.2g}':>6s} {m['clean']:6d} {m['kept']:5d} {f(m['precision'])} "
                  f"{f(m['recall'])} {f(m['f1'])} {f(m['accuracy'])} {f(m['auroc'])}")
    report["command"] = "python benchmarks/scoring_quality.py " + " ".join(argv if argv is not None else sys.argv[1:])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
