"""Training throughput: records/s of one LoRA optimizer step (forward + backward + AdamW), per model.

Every model runs the same work in one process with the same threads: 16 real shipped records cut to
exactly 128 tokens (prompt + response, response-only loss), the default LoRA settings, and
``clues.train.optimizer_step``, the step ``clues train`` itself takes. Prints a table and writes
JSON (default ``benchmarks/results/training.json``).

    python benchmarks/training.py [--models default,smollm2-135m] [--steps 3] [--threads N]

A model that cannot be loaded (``smollm2-135m`` without the optional package, say) is skipped
with a message, not an error.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

from clues.data import encode, shipped
from clues.data.batching import pad_batch
from clues.errors import CluesError
from clues.model import LoraSettings, attach_lora, load_model
from clues.train import optimizer_step
from common import write_result

SEQ_LEN = 128
BATCH = 16


def fixed_length_batch(tokenizer) -> dict:
    """16 medical records whose encoding is exactly 128 tokens (longer ones are cut by ``encode``)."""
    encodings = []
    for record in shipped.load("medmeadow", "benchmark"):
        enc = encode(record, tokenizer, SEQ_LEN)
        if len(enc["input_ids"]) == SEQ_LEN and any(label != -100 for label in enc["labels"]):
            encodings.append(enc)
        if len(encodings) == BATCH:
            break
    if len(encodings) < BATCH:
        raise RuntimeError(f"only {len(encodings)} shipped records reach {SEQ_LEN} tokens")
    return pad_batch(encodings, tokenizer.pad_token_id)


def measure(name: str, steps: int) -> dict:
    """Records/s of ``steps`` timed optimizer steps on ``name``, after one untimed warm-up step."""
    torch.manual_seed(0)
    model, tokenizer = load_model(name)
    model = attach_lora(model, LoraSettings())
    model.train()
    batch = fixed_length_batch(tokenizer)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=2e-4)
    optimizer_step(model, optimizer, [batch], 1.0)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        optimizer_step(model, optimizer, [batch], 1.0)
        times.append(time.perf_counter() - start)
    best, mean = min(times), sum(times) / len(times)
    return {
        "model": name,
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in trainable),
        "steps": steps,
        "step_s_mean": mean,
        "step_s_best": best,
        "records_per_s": BATCH / mean,
        "records_per_s_best": BATCH / best,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="default,smollm2-135m", help="comma-separated presets or local model folders")
    parser.add_argument("--steps", type=int, default=3, help="timed optimizer steps per model")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "training.json"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    load_before = os.getloadavg()[0]  # other jobs on the machine change absolute numbers: record them
    rows, skipped = [], {}
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        try:
            rows.append(measure(name, args.steps))
        except CluesError as exc:
            skipped[name] = str(exc)
            print(f"skipped {name}: {exc}", file=sys.stderr)

    print(f"\ntraining step (fwd+bwd+AdamW), batch {BATCH} x {SEQ_LEN} tokens, {torch.get_num_threads()} threads")
    print(f"{'model':<40} {'params':>12} {'LoRA params':>12} {'s/step':>8} {'records/s':>10}")
    for r in rows:
        print(f"{r['model'][-40:]:<40} {r['parameters']:>12,} {r['trainable']:>12,} {r['step_s_mean']:>8.2f} {r['records_per_s']:>10.1f}")
    result = {
        "batch": BATCH,
        "seq_len": SEQ_LEN,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": {"python": platform.python_version(), "processor": platform.processor() or platform.machine()},
        "load_average_1min": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
        "results": rows,
        "skipped": skipped,
    }
    out = write_result(args.out, "training", "training.py", argv, **result)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
