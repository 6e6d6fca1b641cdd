"""Is there a training regime in which clean data trains a better model than polluted data?

On `mixed-small` with the SmolLM2 regime (top-8 LoRA, lr 1e-3, 3 epochs, adapters TIES-merged)
every condition gave the same quality probe to the last pair (docs/results.md): the fine-tuning
moves the test loss by about 0.1 and no preference at all. This trains one silo's adapter on all its
records (``mixed``) and on its clean records only (``oracle``, as many optimizer steps), under the
pipeline's regime and under stronger ones (more epochs, a larger learning rate), and evaluates each
adapter unmerged on its own domain: test loss, the quality probe, multiple-choice accuracy.

    python benchmarks/regime.py --silo exam-board --seeds 1 --regimes preset,lr5e-3x8

Regimes: ``preset`` (the pipeline's), or ``lr<LR>x<EPOCHS>``. Writes
``benchmarks/results/regime.json`` and prints one line per (seed, regime, condition).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import write_result  # noqa: E402


def regime_config(name: str, base):
    if name == "preset":
        return base
    match = re.fullmatch(r"lr([0-9.e-]+)x(\d+)", name)
    if not match:
        raise SystemExit(f"unknown regime {name!r}: use preset or lr<LR>x<EPOCHS>")
    return replace(base, lr=float(match.group(1)), epochs=int(match.group(2)))


def run_one(args, seed: int, regime: str) -> list[dict]:
    from peft import PeftModel

    from clues import checkpoint as ckpt
    from clues.data.build import build_benchmark
    from clues.data.records import load_records
    from clues.evaluate import evaluate_condition, load_probe
    from clues.metrics import load_labels
    from clues.model import load_model
    from clues.model.loading import PRESET_TRAIN
    from clues.train import TrainConfig, plan, train

    bench = Path(args.work) / f"{args.scenario}-seed{seed}"
    if not (bench / "labels.jsonl").is_file():
        build_benchmark(args.scenario, bench, seed=seed)
    labels = load_labels(bench / "labels.jsonl")
    records = load_records(bench / "silos" / f"{args.silo}.jsonl")
    domain = records[0].domain
    test = [r for r in load_records(bench / "test.jsonl") if r.domain == domain]
    probe = [row for row in load_probe(bench / "probe.jsonl", load_records(bench / "test.jsonl"))
             if row["of"] in {r.id for r in test}]
    config = regime_config(regime, TrainConfig(model=args.model, **PRESET_TRAIN.get(args.model, {})))
    rows = []
    for condition, subset in (("mixed", records), ("oracle", [r for r in records if labels[r.id]["clean"]])):
        run_config = config if condition == "mixed" else replace(config, epochs=None, max_steps=plan(len(records), config)[1])
        run_dir = Path(args.work) / "runs" / f"seed{seed}-{args.silo}-{regime}-{condition}"
        started = time.perf_counter()
        train(run_config, subset, run_dir)
        model, tokenizer = load_model(args.model)
        model = PeftModel.from_pretrained(model, str(ckpt.latest_checkpoint(run_dir)))
        entry = evaluate_condition(model, tokenizer, test, config.max_length, 16, config.template, probe=probe)
        row = {"seed": seed, "regime": regime, "condition": condition, "records": len(subset),
               "test_loss": entry["mean_test_loss"], "probe": entry["preference"]["mean"],
               "probe_by_type": entry["preference"]["accuracy"], "wins": entry["preference"]["wins"],
               "mcq": entry.get("mcq_accuracy"), "seconds": round(time.perf_counter() - started)}
        rows.append(row)
        print(f"seed {seed} {regime:<12} {condition:<7} records {len(subset):>3}  test loss {row['test_loss']:.4f}  "
              f"probe {100 * row['probe']:.1f}%  {row['probe_by_type']}  mcq {row['mcq']}  ({row['seconds']}s)", flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--scenario", default="mixed-small")
    parser.add_argument("--silo", default="exam-board")
    parser.add_argument("--seeds", default="1")
    parser.add_argument("--regimes", default="preset,lr5e-3x8")
    parser.add_argument("--work", default="/tmp/clues-regime")
    parser.add_argument("--out", default=str(HERE / "results" / "regime.json"))
    args = parser.parse_args(argv)
    rows = [row for seed in args.seeds.split(",") for regime in args.regimes.split(",")
            for row in run_one(args, int(seed), regime)]
    write_result(args.out, "regime", "regime.py", argv, rows=rows)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
