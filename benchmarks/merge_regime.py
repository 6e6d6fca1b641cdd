"""Does the merge decide whether data quality can show? Mixed vs oracle under several merges.

For each seed and merge this runs ``clues run`` with the conditions ``base`` (no adapter), ``mixed``
(every silo on all its records) and ``oracle`` (every silo on its clean records only, as many
optimizer steps) and compares them on the quality probe, pair by pair (``clues.stats``), and on the
test loss. No selection method runs: the question is only whether clean data *can* train a better
merged model than all records, i.e. whether there is any gain for a selection to recover.

    python benchmarks/merge_regime.py --model default --scenario mixed --seeds 1,2,3 \\
        --merges ties:factor,linear:delta,ties:delta

A merge is ``METHOD:SPACE`` (``clues run --merge METHOD --merge-space SPACE``). Runs go to
``WORK/out/<method>-<space>-seed<N>`` and resume; a merge's run starts from a copy of a finished run
of the same seed, so the silos train once per seed and each further merge only merges and evaluates. Writes ``benchmarks/results/merge_regime.json``
and prints Markdown.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import interval, write_result  # noqa: E402


def run(args, seed: int, merge: str) -> dict:
    """``results.json`` of one (seed, merge), run if missing."""
    from clues.data.build import build_benchmark

    method, space = merge.split(":")
    bench = Path(args.work) / f"{args.scenario}-seed{seed}"
    if not (bench / "labels.jsonl").is_file():
        build_benchmark(args.scenario, bench, seed=seed)
    out = Path(args.work) / "out" / f"{method}-{space}-seed{seed}"
    if not (out / "results.json").is_file():
        # The silos' training does not depend on the merge: start from a finished run of this seed, whose
        # training stages are then reused (resumption by stage key), and only merge and evaluate again.
        done = sorted(p.parent for p in (Path(args.work) / "out").glob(f"*-seed{seed}/results.json"))
        if done and not out.exists():
            shutil.copytree(done[0], out)
            (out / "results.json").unlink()  # the other merge's: this run writes its own
        config = Path(args.work) / f"{method}-{space}-seed{seed}.toml"
        lines = [f'model = "{args.model}"', *(f'{name} = "{bench / (name + ".jsonl")}"'
                                             for name in ("validation", "anchor", "test", "labels", "probe")),
                 f'out = "{out}"', 'conditions = ["base", "mixed", "oracle"]',
                 "[merge]", f'method = "{method}"', f'space = "{space}"', "[silos]",
                 *(f'{p.stem} = "{p}"' for p in sorted((bench / "silos").glob("*.jsonl")))]
        config.write_text("\n".join(lines) + "\n", encoding="utf-8")
        subprocess.run(["clues", "run", "--config", str(config)], check=True)
    return json.loads((out / "results.json").read_text(encoding="utf-8"))


def compare(results: dict) -> dict:
    """Probe and test loss of base, mixed and oracle; oracle - mixed and mixed - base, pair by pair."""
    from clues.stats import paired_difference

    conditions = results["conditions"]
    wins = {name: c["preference"]["wins"] for name, c in conditions.items()}
    row = {f"{name} probe": c["preference"]["mean"] for name, c in conditions.items()}
    row.update({f"{name} loss": c["mean_test_loss"] for name, c in conditions.items()})
    row.update({f"{name} {kind}": value for name, c in conditions.items()
                for kind, value in c["preference"]["accuracy"].items()})
    row["oracle - mixed"] = paired_difference(wins["oracle"], wins["mixed"])
    row["mixed - base"] = paired_difference(wins["mixed"], wins["base"])
    return row


def pct(value) -> str:
    mean, half = value
    return f"{100 * mean:+.1f} ({100 * (mean - half):+.1f} to {100 * (mean + half):+.1f})"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--scenario", default="mixed")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--merges", default="ties:factor,linear:delta,ties:delta")
    parser.add_argument("--work", default="/tmp/clues-merge-regime")
    parser.add_argument("--out", default=str(HERE / "results" / "merge_regime.json"))
    args = parser.parse_args(argv)

    seeds = [int(s) for s in args.seeds.split(",")]
    rows = {merge: {seed: compare(run(args, seed, merge)) for seed in seeds} for merge in args.merges.split(",")}
    print("| merge | seed | probe: base / mixed / oracle | probe: oracle - mixed (95% over pairs) | probe: mixed - base | "
          "test loss: base / mixed / oracle |\n|---|---|---|---|---|---|")
    summary = {}
    for merge, by_seed in rows.items():
        for seed, r in by_seed.items():
            print(f"| {merge} | {seed} | {100 * r['base probe']:.1f} / {100 * r['mixed probe']:.1f} / "
                  f"{100 * r['oracle probe']:.1f} | {pct(r['oracle - mixed'])} | {pct(r['mixed - base'])} | "
                  f"{r['base loss']:.3f} / {r['mixed loss']:.3f} / {r['oracle loss']:.3f} |")
        gaps = [r["oracle - mixed"][0] for r in by_seed.values()]
        summary[merge] = {"oracle - mixed": interval(gaps),
                          "mixed loss - base loss": interval([r["mixed loss"] - r["base loss"] for r in by_seed.values()])}
    print("\n| merge | oracle - mixed, probe (95% t over seeds) | mixed - base, test loss |\n|---|---|---|")
    for merge, s in summary.items():
        (gap, half), (loss, loss_half) = s["oracle - mixed"], s["mixed loss - base loss"]
        print(f"| {merge} | {100 * gap:+.1f} ± {100 * half:.1f} | {loss:+.3f} ± {loss_half:.3f} |")
    path = write_result(args.out, "merge_regime", "merge_regime.py", argv, model=args.model, scenario=args.scenario,
                        seeds=seeds, per_seed={m: {str(s): r for s, r in b.items()} for m, b in rows.items()},
                        summary=summary)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
