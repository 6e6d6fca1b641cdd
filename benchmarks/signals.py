"""Which per-record signals see which corruption: within-silo AUROC of likelihood features.

CLUES ranks records by gradient alignment with the validation data. Some corruptions leave marks a
language model sees directly, without any gradient: an answer cut short ends where no answer ends
(its end-of-sequence token is improbable); an answer to another question is no more likely after its
question than without it; noise makes single tokens improbable. This measures, for each feature and
each corruption type, the within-silo AUROC (clean = positive, higher feature = cleaner) under the
base model (``--adapter none``) or a silo's warm-up adapter (``--adapter warmup``: one run per silo,
with the pipeline's training settings for the model).

Features, per record (losses are per response token, end of sequence included, as in training):
``loss``   minus the response loss given the prompt;
``pmi``    loss of the response alone minus its loss given the prompt (how much the question helps);
``ifd``    minus loss given prompt / loss alone (Cherry LLM's IFD, lower is better);
``eos``    minus the loss of the end-of-sequence token alone (how finished the answer looks);
``tail``   minus the mean of the worst 10% of the response tokens' losses.

    python benchmarks/signals.py --model smollm2-135m --scenario mixed-small --seeds 1,2,3

Writes ``benchmarks/results/signals-<adapter>.json`` and prints mean AUROC (95% t-interval over seeds).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import interval, write_result  # noqa: E402
from layer_choice import silo_aurocs  # noqa: E402

FEATURES = ("loss", "pmi", "ifd", "eos", "tail")


def token_losses(model, encodings, pad_id: int, batch_size: int) -> list[torch.Tensor]:
    """The loss of every response token of every encoding (in order), end of sequence included."""
    from clues.data.batching import length_sorted_batches, pad_batch

    out: list[torch.Tensor] = [torch.empty(0)] * len(encodings)
    model.eval()
    with torch.no_grad():
        for indices in length_sorted_batches([len(e["input_ids"]) for e in encodings], batch_size):
            batch = pad_batch([encodings[i] for i in indices], pad_id)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
            labels = batch["labels"][:, 1:]
            losses = F.cross_entropy(logits.transpose(1, 2), labels.clamp(min=0), reduction="none")
            for row, i in enumerate(indices):
                out[i] = losses[row][labels[row] != -100]
    return out


def features(model, tokenizer, records, max_length: int, template: str, batch_size: int = 8) -> dict[str, list[float]]:
    from clues.baselines.likelihood import response_alone, start_token
    from clues.data.template import encode_all

    encodings, _ = encode_all(records, tokenizer, max_length, template)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    given = token_losses(model, encodings, pad_id, batch_size)
    alone = token_losses(model, [response_alone(e, start_token(tokenizer)) for e in encodings], pad_id, batch_size)
    result = {name: [] for name in FEATURES}
    for cond, bare in zip(given, alone):
        lc, la = float(cond.mean()), float(bare.mean())
        worst = cond.sort(descending=True).values[: max(1, len(cond) // 10)]
        result["loss"].append(-lc)
        result["pmi"].append(la - lc)
        result["ifd"].append(-lc / la if la > 0 else -1.0)
        result["eos"].append(-float(cond[-1]))
        result["tail"].append(-float(worst.mean()))
    return result


def clues_scores(model_name: str, config, records, anchors, validation, run_dir: Path) -> dict[str, list[float]]:
    """CLUES' own-domain gradient score of the records and of the anchors, from the silo's warm-up run."""
    from clues.scoring.engine import ScoreSettings, score_run
    from clues.train import train

    train(config, records, run_dir)
    result = score_run(run_dir, {"data": records, "anchor": anchors}, validation, ScoreSettings(w_other=0.0))
    return {"data": result.total("data").tolist(), "anchor": result.total("anchor").tolist()}


def run_one(model_name: str, scenario: str, seed: int, adapter: str, work: Path, with_clues: bool = False) -> dict:
    from peft import PeftModel

    from clues import checkpoint as ckpt
    from clues.data.build import build_benchmark
    from clues.data.records import load_records
    from clues.metrics import load_labels
    from clues.model import load_model
    from clues.model.loading import PRESET_TRAIN
    from clues.train import TrainConfig, train

    bench = work / f"{scenario}-seed{seed}"
    if not (bench / "labels.jsonl").is_file():
        build_benchmark(scenario, bench, seed=seed)
    labels = load_labels(bench / "labels.jsonl")
    anchors = load_records(bench / "anchor.jsonl")
    validation = load_records(bench / "validation.jsonl")
    settings = PRESET_TRAIN.get(model_name, {})
    config = TrainConfig(model=model_name, **settings)
    result = {"seed": seed, "silos": {}}
    for silo_file in sorted((bench / "silos").glob("*.jsonl")):
        records = load_records(silo_file)
        started = time.perf_counter()
        model, tokenizer = load_model(model_name)
        if adapter == "warmup":
            run_dir = work / "runs" / f"{scenario}-seed{seed}" / silo_file.stem
            train(config, records, run_dir)
            model = PeftModel.from_pretrained(model, str(ckpt.latest_checkpoint(run_dir)))
        values = features(model, tokenizer, records, config.max_length, config.template)
        mine = [a for a in anchors if a.domain == records[0].domain]
        anchor_values = features(model, tokenizer, mine, config.max_length, config.template)
        entry = {name: silo_aurocs(records, values[name], labels) for name in FEATURES}
        if with_clues:
            run_dir = work / "runs" / f"{scenario}-seed{seed}-clues" / silo_file.stem
            scored = clues_scores(model_name, config, records, mine, validation, run_dir)
            values["clues"], anchor_values["clues"] = scored["data"], scored["anchor"]
            entry["clues"] = silo_aurocs(records, values["clues"], labels)
        entry["values"] = {"data": values, "anchor": anchor_values,
                           "clean": [labels[r.id]["clean"] for r in records],
                           "corruption": [labels[r.id].get("corruption") for r in records]}
        result["silos"][silo_file.stem] = entry
        shown = ", ".join(f"{name} {entry[name]['all']:.2f}" for name in entry if name != "values")
        print(f"seed {seed} {silo_file.stem}: {shown} ({time.perf_counter() - started:.0f}s)", flush=True)
    return result


def summarize(runs: list[dict]) -> dict:
    """``{feature: {kind: (mean, half-width)}}``: per seed the mean over silos, then a t-interval over seeds."""
    summary = {}
    for name in [*FEATURES, "clues"]:
        if not all(name in s for r in runs for s in r["silos"].values()):
            continue
        kinds = sorted({k for r in runs for s in r["silos"].values() for k in s[name]})
        row = {}
        for kind in kinds:
            per_seed = [statistics.fmean([s[name][kind] for s in r["silos"].values() if s[name].get(kind) is not None])
                        for r in runs]
            row[kind] = interval(per_seed)
        summary[name] = row
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--scenario", default="mixed-small")
    parser.add_argument("--seeds", default="1,2,3", help="benchmark seeds (0 is the demo's: keep it aside)")
    parser.add_argument("--adapter", default="none", choices=("none", "warmup"))
    parser.add_argument("--clues", action="store_true", help="also train each silo's warm-up run and score it with CLUES")
    parser.add_argument("--work", default="/tmp/clues-signals")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    out = Path(args.out or HERE / "results" / f"signals-{args.adapter}.json")
    runs = []
    for seed in args.seeds.split(","):
        runs.append(run_one(args.model, args.scenario, int(seed), args.adapter, Path(args.work), args.clues))
        # after every seed, so a long study can be read before it ends
        write_result(out, "signals", "signals.py", argv, runs=runs, summary=summarize(runs))
    summary = summarize(runs)
    print(f"\n{args.model} ({args.adapter}) on {args.scenario}, seeds {args.seeds}: within-silo AUROC, 95% t-interval")
    kinds = sorted({k for row in summary.values() for k in row})
    print(f"{'feature':<8}" + "".join(f"{k[:12]:>16}" for k in kinds))
    for name, row in summary.items():
        print(f"{name:<8}" + "".join(f"{row[k][0]:>9.3f}±{row[k][1]:<6.3f}" if k in row else f"{'-':>16}" for k in kinds))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
