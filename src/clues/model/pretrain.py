"""Pretraining the shipped default model, reproducibly, on the shipped pretraining split.

    python -m clues.model.pretrain --out src/clues/model/default [--seed 0] [--steps N] [--minutes M]

Data: ``shipped.load(name, "pretrain")`` for every shipped dataset (records that no benchmark ever
uses), each rendered exactly as fine-tuning renders it: the Alpaca prompt of clues.data.template, the
output, then EOS, so the model already knows the template and where answers end. The records are
shuffled once with the seed, 5% are held out, and the rest are packed into one token stream that
training samples fixed-length blocks from (nanoGPT style), with a seeded generator.

The learning-rate schedule (linear warm-up, then inverse square root) does not depend on the total
number of steps, so a run stopped by ``--minutes`` after step N is exactly the run ``--steps N``
would give: the model card records N.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from clues.data import shipped
from clues.data.template import render_prompt
from clues.model.tokenizer_training import save_tokenizer, train_tokenizer


@dataclass
class PretrainConfig:
    """Architecture and optimisation settings; sized for >= 50 records/s in LoRA fine-tuning on 2 CPU cores."""

    seed: int = 0
    vocab_size: int = 4096
    hidden_size: int = 192
    intermediate_size: int = 384
    num_layers: int = 4
    num_heads: int = 6
    num_kv_heads: int = 2
    max_positions: int = 512
    block_size: int = 256
    batch_size: int = 8
    steps: int = 3000
    peak_lr: float = 3e-3
    warmup_steps: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    heldout_fraction: float = 0.05
    eval_every: int = 50
    eval_blocks: int = 48


def pretraining_records(seed: int, heldout_fraction: float = PretrainConfig.heldout_fraction):
    """(train, heldout) record lists: every shipped pretraining record, shuffled with ``seed``."""
    records = [r for name in shipped.FILES for r in shipped.load(name, "pretrain")]
    records.sort(key=lambda r: r.id)  # file order must not matter, only the seed
    random.Random(seed).shuffle(records)
    n_held = max(1, round(len(records) * heldout_fraction))
    return records[n_held:], records[:n_held]


def record_ids(record, tokenizer) -> list[int]:
    """Prompt, response and EOS tokenized separately, as clues.data.template.encode does."""
    prompt = tokenizer(render_prompt(record), add_special_tokens=True)["input_ids"]
    response = tokenizer(record.output, add_special_tokens=False)["input_ids"]
    return list(prompt) + list(response) + [tokenizer.eos_token_id]


def token_stream(records, tokenizer) -> torch.Tensor:
    return torch.tensor([t for r in records for t in record_ids(r, tokenizer)], dtype=torch.long)


def learning_rate(step: int, cfg: PretrainConfig) -> float:
    """Warm-up then inverse square root: independent of the total step count (see module doc)."""
    if step < cfg.warmup_steps:
        return cfg.peak_lr * (step + 1) / cfg.warmup_steps
    return cfg.peak_lr * math.sqrt(cfg.warmup_steps / (step + 1))


def build_model(cfg: PretrainConfig, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_positions,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
    )
    config._attn_implementation = "eager"
    torch.manual_seed(cfg.seed)
    return LlamaForCausalLM(config)


@torch.no_grad()
def heldout_loss(model, blocks: torch.Tensor) -> float:
    """Mean next-token loss over fixed held-out blocks (batches of 8, equal lengths, no padding)."""
    model.eval()
    total = 0.0
    for start in range(0, len(blocks), 8):
        batch = blocks[start : start + 8]
        total += model(input_ids=batch, labels=batch).loss.item() * len(batch)
    model.train()
    return total / len(blocks)


def pretrain(out: Path, cfg: PretrainConfig, minutes: float | None = None) -> dict:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    torch.manual_seed(cfg.seed)
    started = time.time()
    train_records, held_records = pretraining_records(cfg.seed, cfg.heldout_fraction)
    texts = (t for r in train_records for t in (render_prompt(r), r.output))
    tokenizer = train_tokenizer(texts, cfg.vocab_size, cfg.max_positions)
    train_stream = token_stream(train_records, tokenizer)
    held_stream = token_stream(held_records, tokenizer)
    n_held = min(cfg.eval_blocks, len(held_stream) // cfg.block_size)
    held_blocks = held_stream[: n_held * cfg.block_size].view(n_held, cfg.block_size)

    model = build_model(cfg, tokenizer)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.peak_lr,
        betas=(0.9, 0.95),
    )
    generator = torch.Generator().manual_seed(cfg.seed)
    log = {"eval": [], "train": []}
    log["eval"].append({"step": 0, "heldout_loss": heldout_loss(model, held_blocks)})
    best = (log["eval"][0]["heldout_loss"], 0, {k: v.clone() for k, v in model.state_dict().items()})
    running, step = None, 0
    stopped_by_time = False
    columns = (TextColumn("pretrain"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns) as progress:
        task = progress.add_task("pretrain", total=cfg.steps, info="")
        for step in range(1, cfg.steps + 1):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step - 1, cfg)
            starts = torch.randint(0, len(train_stream) - cfg.block_size, (cfg.batch_size,), generator=generator)
            batch = torch.stack([train_stream[s : s + cfg.block_size] for s in starts.tolist()])
            loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
            if step % 10 == 0:
                log["train"].append({"step": step, "loss": round(running, 4), "lr": group["lr"]})
            out_of_time = minutes is not None and time.time() - started > minutes * 60
            if step % cfg.eval_every == 0 or step == cfg.steps or out_of_time:
                held = heldout_loss(model, held_blocks)
                log["eval"].append({"step": step, "heldout_loss": round(held, 4), "train_loss": round(running, 4)})
                if held < best[0]:
                    best = (held, step, {k: v.clone() for k, v in model.state_dict().items()})
                print(f"step {step}: train {running:.3f} held-out {held:.3f} ({time.time() - started:.0f}s)", flush=True)
            progress.update(task, advance=1, info=f"loss {running:.3f}")
            if out_of_time:
                stopped_by_time = True
                break

    model.load_state_dict(best[2])
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    save_tokenizer(tokenizer, out)
    summary = {
        "config": asdict(cfg),
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_records": len(train_records),
        "heldout_records": len(held_records),
        "train_tokens": len(train_stream),
        "heldout_tokens_evaluated": int(held_blocks.numel()),
        "steps_run": step,
        "stopped_by_time_limit": stopped_by_time,
        "best_step": best[1],
        "best_heldout_loss": round(best[0], 4),
        "initial_heldout_loss": round(log["eval"][0]["heldout_loss"], 4),
        "ln_vocab": round(math.log(len(tokenizer)), 4),
        "wall_time_s": round(time.time() - started, 1),
        "minutes_limit": minutes,
        "torch": torch.__version__,
        "log": log,
    }
    (out / "pretrain_log.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    return summary


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Pretrain the shipped default model on the shipped pretraining split.")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=PretrainConfig.steps)
    parser.add_argument("--minutes", type=float, default=None, help="stop (and save the best model so far) after this long")
    args = parser.parse_args(argv)
    summary = pretrain(args.out, PretrainConfig(seed=args.seed, steps=args.steps), args.minutes)
    print(json.dumps({k: v for k, v in summary.items() if k not in ("log", "config")}, indent=1))
    from clues.model.card import write_card

    print(f"model card written; {write_card(args.out):.1f} records/s forward+backward (LoRA, batch 16 x 128)")


if __name__ == "__main__":
    main()
