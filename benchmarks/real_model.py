"""What the exact shortcuts buy on a real model: records/s of training and scoring, side by side.

One process, one batch of real shipped records cut to the same length, the same threads, for:

- ``full``: LoRA on every layer, logits at every position (the plain forward, as before);
- ``response-logits``: LoRA on every layer, the LM head applied at response positions only;
- ``top-K``: LoRA on the top K layers only, plain decoder forward (response-only logits);
- ``top-K cached``: the same, with the frozen layers' output computed once per record and reused
  (:mod:`clues.model.frozen_prefix`); the one-off cost of filling the cache is reported apart,
  per record, because it is paid once per record for all epochs, checkpoints and record sets.

Training is one ``clues.train.optimizer_step`` (forward, backward, AdamW); scoring is one batch of
per-record LoRA gradients (``clues.scoring.per_sample.per_record_gradients``), what the CLUES
score spends its time on. Every variant's loss is checked against the plain forward's.

    python benchmarks/real_model.py [--model smollm2-135m] [--top 4] [--records 8] [--tokens 128] [--steps 2]

Writes ``benchmarks/results/real_model.json`` and prints a table.
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
from clues.loss import batch_record_losses, per_record_loss
from clues.model import LoraSettings, attach_lora, load_model
from clues.model.frozen_prefix import fill_prefix
from clues.scoring.params import select_blocks
from clues.scoring.per_sample import per_record_gradients
from common import write_result


def encodings(tokenizer, records: int, tokens: int) -> list[dict]:
    """``records`` medical records whose encoding is exactly ``tokens`` long (longer ones are cut)."""
    out = []
    for record in shipped.load("medmeadow", "benchmark"):
        enc = encode(record, tokenizer, tokens)
        if len(enc["input_ids"]) == tokens and any(label != -100 for label in enc["labels"]):
            out.append(enc)
        if len(out) == records:
            return out
    raise RuntimeError(f"only {len(out)} shipped records reach {tokens} tokens")


def plain_losses(model, batch):
    """The forward as it was: logits at every position, then the project loss."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    return per_record_loss(logits, batch["labels"])


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sum(times) / len(times)


def variant(name, model_name, lora_layers, cached, plain, encs, pad_id, steps) -> dict:
    torch.manual_seed(0)
    model, _ = load_model(model_name)
    model = attach_lora(model, LoraSettings(dropout=0.0, layers=lora_layers))
    encs = [dict(e) for e in encs]
    fill_s = 0.0
    if cached:
        start = time.perf_counter()
        fill_prefix(model.eval(), encs, pad_id, batch_size=len(encs))
        fill_s = time.perf_counter() - start
    batch = pad_batch(encs, pad_id)
    losses_of = plain_losses if plain else batch_record_losses
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=0.0)  # lr 0: every timed step sees the same weights

    def train_step():
        model.train()
        loss = losses_of(model, batch).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    blocks = select_blocks(model.eval(), "all")

    def score_batch():
        model.eval()
        if plain:
            # the plain path as the engine ran it: full logits inside the hooked forward
            from clues.model import frozen_prefix

            saved = frozen_prefix._parts
            frozen_prefix._parts = lambda m: None
            try:
                for _ in per_record_gradients(model, batch, blocks):
                    pass
            finally:
                frozen_prefix._parts = saved
        else:
            for _ in per_record_gradients(model, batch, blocks):
                pass

    with torch.no_grad():
        model.eval()
        loss = float(losses_of(model, batch).mean())
    train_s = timed(train_step, steps)
    score_s = timed(score_batch, steps)
    n = len(encs)
    return {
        "variant": name, "lora_layers": lora_layers, "cached": cached, "loss": loss,
        "lora_params": sum(p.numel() for p in params),
        "train_step_s": train_s, "train_records_per_s": n / train_s,
        "score_batch_s": score_s, "score_records_per_s": n / score_s,
        "cache_fill_s_per_record": fill_s / n if cached else None,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--top", type=int, default=4, help="LoRA layers of the top-K variants")
    parser.add_argument("--records", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--steps", type=int, default=2, help="timed repeats per variant (after one warm-up)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "real_model.json"))
    args = parser.parse_args(argv)

    load_before = os.getloadavg()[0]
    _, tokenizer = load_model(args.model)
    encs = encodings(tokenizer, args.records, args.tokens)
    pad_id = tokenizer.pad_token_id
    plan = [("full", None, False, True), ("response-logits", None, False, False),
            (f"top-{args.top}", args.top, False, False), (f"top-{args.top} cached", args.top, True, False)]
    rows = []
    for name, layers, cached, plain in plan:
        rows.append(variant(name, args.model, layers, cached, plain, encs, pad_id, args.steps))
        r = rows[-1]
        print(f"{name:<18} train {r['train_records_per_s']:6.2f} rec/s  score {r['score_records_per_s']:6.2f} rec/s  loss {r['loss']:.6f}", flush=True)
    base = rows[0]
    print(f"\n{args.model}: batch {args.records} x {args.tokens} tokens, {torch.get_num_threads()} threads")
    print(f"{'variant':<18} {'LoRA params':>12} {'train rec/s':>12} {'x full':>7} {'score rec/s':>12} {'x full':>7} {'fill s/rec':>10} {'loss diff':>10}")
    for r in rows:
        fill = f"{r['cache_fill_s_per_record']:.3f}" if r["cached"] else "-"
        print(f"{r['variant']:<18} {r['lora_params']:>12,} {r['train_records_per_s']:>12.2f} "
              f"{base['train_step_s'] / r['train_step_s']:>7.1f} {r['score_records_per_s']:>12.2f} "
              f"{base['score_batch_s'] / r['score_batch_s']:>7.1f} {fill:>10} {abs(r['loss'] - base['loss']):>10.1e}")
    result = {
        "model": args.model, "records": args.records, "tokens": args.tokens, "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": {"python": platform.python_version(), "processor": platform.processor() or platform.machine()},
        "load_average_1min": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
        "results": rows,
    }
    out = write_result(args.out, "real_model", "real_model.py", argv, **result)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
