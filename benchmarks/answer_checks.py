"""Does each answer check flag the corruption it is aimed at? Validated before any model's answers are judged.

On a benchmark's held-out test set, every reference answer has corrupted twins (``probe.jsonl``: the
same question with a mismatched, truncated, other-language or noisy answer). Each check scores the
reference and its twins; the AUROC of "reference above twin" per corruption type says whether the
check can see that corruption at all (0.5: blind; 1.0: always). ``fluent`` needs the model whose base
likelihood judges fluency. The pass rate of the references themselves says how often a good answer
fails a check (its false alarms).

    python benchmarks/answer_checks.py --scenario mixed-small --model smollm2-135m --seeds 1
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_result  # noqa: E402

RESULT = Path(__file__).resolve().parent / "results" / "answer_checks.json"
CHECKS = ("language", "complete", "fluent", "relevant", "passed")


def check_values(rows: list[dict], check: str) -> list[float | None]:
    """The number each check gives (its continuous form where it has one, else its pass/fail)."""
    continuous = {"language": "language", "relevant": "rouge_l"}
    out = []
    for row in rows:
        if check == "fluent":
            out.append(-row["base_loss"])  # lower loss is more fluent
        elif check in continuous and row.get(continuous[check]) is not None and not row.get("option_question"):
            out.append(float(row[continuous[check]]))
        else:
            out.extend(pass_values([row], check))
    return out


def pass_values(rows: list[dict], check: str) -> list[float | None]:
    """Each row's pass/fail of ``check`` (None where it was not measured)."""
    return [float(row["passed"]) if check == "passed" else
            None if row["passes"].get(check) is None else float(row["passes"][check]) for row in rows]


def one_seed(scenario: str, seed: int, model_name: str, max_length: int) -> dict:
    from clues.answers.checks import check_answer
    from clues.answers.quality import fluency_limits, references
    from clues.data import load_records
    from clues.data.build import build_benchmark
    from clues.evaluate import domain_of, load_probe, record_losses
    from clues.metrics import roc_auc
    from clues.model import load_model

    with tempfile.TemporaryDirectory() as folder:
        build_benchmark(scenario, Path(folder), seed=seed)
        test = load_records(Path(folder) / "test.jsonl")
        probe = load_probe(Path(folder) / "probe.jsonl", test)
    model, tokenizer = load_model(model_name)
    position = {r.id: i for i, r in enumerate(test)}
    refs = references(test)
    twins = [replace(test[position[row["of"]]], output=row["output"]) for row in probe]
    losses = record_losses(model, tokenizer, [*test, *twins], max_length)
    limits = fluency_limits(losses[: len(test)], test)

    def rows_of(records, texts_losses):
        rows = []
        for record, (text, loss) in zip(records, texts_losses):
            reference = refs[position[record.id]]
            row = check_answer(text, reference, fluent=loss <= limits[domain_of(record)])
            rows.append({**row, "base_loss": loss, "option_question": bool(reference.options)})
        return rows

    good = rows_of(test, [(r.output, loss) for r, loss in zip(test, losses)])
    bad = rows_of(twins, [(row["output"], loss) for row, loss in zip(probe, losses[len(test):])])
    result = {"reference_pass_rate": {c: _share(pass_values(good, c)) for c in CHECKS}, "auroc": {}}
    for kind in sorted({row["corruption"] for row in probe}):
        result["auroc"][kind] = {}
        pairs = [(position[row["of"]], i) for i, row in enumerate(probe) if row["corruption"] == kind]
        for check in CHECKS:
            ref_values, twin_values = check_values(good, check), check_values(bad, check)
            scored = [(ref_values[g], twin_values[b]) for g, b in pairs
                      if ref_values[g] is not None and twin_values[b] is not None]
            scores = [g for g, _ in scored] + [b for _, b in scored]
            result["auroc"][kind][check] = roc_auc(scores, [True] * len(scored) + [False] * len(scored)) if scored else None
    return result


def _share(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="mixed-small")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--seeds", default="1")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--out", default=str(RESULT))
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    per_seed = {seed: one_seed(args.scenario, seed, args.model, args.max_length) for seed in seeds}
    write_result(args.out, "answer_checks", "answer_checks.py", argv, scenario=args.scenario, model=args.model,
                 seeds=seeds, per_seed=per_seed)
    for seed, result in per_seed.items():
        print(f"seed {seed}: reference pass rate " + ", ".join(f"{c} {v:.2f}" for c, v in result["reference_pass_rate"].items() if v is not None))
        print("| corruption | " + " | ".join(CHECKS) + " |")
        for kind, aurocs in result["auroc"].items():
            print(f"| {kind} | " + " | ".join("–" if v is None else f"{v:.3f}" for v in aurocs.values()) + " |")


if __name__ == "__main__":
    main()
