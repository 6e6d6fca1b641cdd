"""Local LoRA fine-tuning that leaves traceable checkpoints behind.

CLUES scores a record by how its gradient lines up with the validation gradient at each checkpoint,
weighted by the learning rate and preconditioned by the Adam moments (CLUES.md section 2). So
training must save, at every checkpoint, the adapter, the AdamW moments and the learning rate that
led there; :mod:`clues.checkpoint` holds the format, this module the loop.

Choices, and why:

- **Loss**: :func:`clues.loss.batch_record_losses`, the project's one loss (response tokens only,
  mean over each record's own response tokens). A step's loss is the mean of its records' losses,
  so every record weighs the same whatever its length or the micro-batch it lands in; gradient
  accumulation divides by the step's record count, so ``--batch-size 8 --grad-accum 2`` makes the
  same update as ``--batch-size 16``.
- **Schedule**: linear warm-up over ``ceil(warmup_ratio * total_steps)`` steps, then linear decay.
  Step ``i`` (0-based) uses ``lr * (i + 1) / W`` during warm-up and ``lr * (T - i) / (T - W)`` after,
  so no step runs at lr 0 (the Hugging Face schedule wastes the first step that way) and the last
  step uses ``lr / (T - W)``.
- **Precision**: the model and the LoRA weights in ``config.dtype`` (float32 by default, the only
  sensible choice on CPU); the loss is always computed in float32 (``per_record_loss``). The same
  policy is recorded in every checkpoint so scoring can match it.
- **Data order**: a permutation per epoch from a ``torch.Generator`` seeded with ``seed`` (epoch e
  uses the (e+1)-th permutation), so the order depends on nothing but the seed and resuming can
  recompute it. LoRA dropout draws from the global torch RNG, which is seeded here, saved with
  every checkpoint and restored on resume; the caller's RNG state is left untouched.
- **Resume**: rerunning on the same folder continues from the last complete checkpoint and ends
  with the same adapter as an uninterrupted run; a different config or different data is an error.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from pathlib import Path
from typing import Sequence

import torch

from clues import checkpoint as ckpt
from clues.config import DTYPES, TrainConfig  # the settings live with every other one
from clues.data.batching import pad_batch
from clues.data.records import Record
from clues.data.template import encode_all
from clues.errors import CluesError, TrainingDiverged
from clues.loss import batch_record_losses

META_FORMAT = 1
# Options that change how fast a run goes, never its result: a run may resume with another value.
RESULT_NEUTRAL = ("cache_frozen",)


# --- schedule and data order -----------------------------------------------------------------


def plan(n_records: int, config: TrainConfig) -> tuple[int, int]:
    """``(steps_per_epoch, total_steps)``; the last step of an epoch may hold fewer records."""
    steps_per_epoch = math.ceil(n_records / config.records_per_step)
    total = config.max_steps if config.max_steps is not None else config.epochs * steps_per_epoch
    return steps_per_epoch, total


def warmup_steps(total_steps: int, ratio: float) -> int:
    return math.ceil(ratio * total_steps)


def lr_factor(step: int, total_steps: int, warmup: int) -> float:
    """Multiplier of the base lr used by optimizer step ``step`` (0-based); never 0 within the run."""
    if step < warmup:
        return (step + 1) / warmup
    # max(1, ...): when warm-up covers every step (one-step runs), the scheduler still asks for the
    # factor after the last step
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup))


def epoch_order(n_records: int, seed: int, epoch: int) -> list[int]:
    """The record order of one epoch: the (epoch+1)-th permutation of a generator seeded with ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epoch):
        torch.randperm(n_records, generator=generator)
    return torch.randperm(n_records, generator=generator).tolist()


def data_fingerprint(records: Sequence[Record]) -> str:
    """SHA-256 of the records' ids and texts in file order: resuming on other data is refused."""
    digest = hashlib.sha256()
    for r in records:
        digest.update("\x1f".join((r.id, r.instruction, r.input, r.output)).encode("utf-8") + b"\x1e")
    return digest.hexdigest()


# --- one optimizer step ----------------------------------------------------------------------


def optimizer_step(model, optimizer, micro_batches: Sequence[dict], max_grad_norm: float = 0.0) -> float:
    """Accumulate gradients over ``micro_batches`` (padded, from ``pad_batch``) and take one step.

    Each micro-batch's summed record losses are divided by the step's total record count, so the
    update is that of the mean record loss over the whole step. Returns that mean loss.
    """
    n_records = sum(int(b["input_ids"].shape[0]) for b in micro_batches)
    total = 0.0
    for batch in micro_batches:
        losses = batch_record_losses(model, batch)
        (losses.sum() / n_records).backward()
        total += float(losses.detach().sum())
    if not math.isfinite(total):  # refuse before the step: the weights and the last checkpoint stay sound
        optimizer.zero_grad(set_to_none=True)
        raise TrainingDiverged(f"training diverged: a step's mean loss is {total / n_records} at learning rate "
                               f"{optimizer.param_groups[0]['lr']:g}; lower the learning rate (the last checkpoint is kept)")
    if max_grad_norm and max_grad_norm > 0:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total / n_records


def _micro_batches(encodings, indices, batch_size, pad_id) -> list[dict]:
    return [pad_batch([encodings[i] for i in indices[j : j + batch_size]], pad_id) for j in range(0, len(indices), batch_size)]


# --- resume ----------------------------------------------------------------------------------


def _check_resumable(meta: dict, config: TrainConfig, base_model: str, fingerprint: str, run_dir: Path) -> None:
    """Refuse to continue a run that was started with another config, model or data."""
    wanted = {**config.to_dict(), "model": base_model}
    saved = {**meta.get("config", {}), "model": meta.get("base_model")}
    diffs = [f"{k}: {saved.get(k)!r} there, {wanted.get(k)!r} now" for k in wanted
             if k not in RESULT_NEUTRAL and saved.get(k) != wanted.get(k)]
    if meta.get("data", {}).get("sha256") != fingerprint:
        diffs.append("data: different records")
    if diffs:
        raise CluesError(
            f"{run_dir} holds checkpoints of a different training run ({'; '.join(diffs)}); "
            "rerun with the same options and data to resume it, or choose another --out folder"
        )


def _restore(model, optimizer, last: Path, step: int) -> None:
    """Adapter weights, AdamW moments and step counts, and the RNG state of checkpoint ``last``."""
    ckpt.load_adapter(model, last)
    ckpt.restore_moments(model, optimizer, ckpt.load_moments(last), step, last)
    torch.set_rng_state(ckpt.load_rng_state(last))


# --- the loop ----------------------------------------------------------------------------------


def _progress(console):
    """A rich progress bar with the step loss and records/s (disabled when training silently)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn("training"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("{task.fields[rate]} rec/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=console is None,
    )


def train(config: TrainConfig, records: Sequence[Record], out_dir: str | os.PathLike, console=None) -> Path:
    """Fine-tune a LoRA adapter on ``records``; write checkpoints to ``out_dir``; return the last one.

    If ``out_dir`` already holds checkpoints of this same run, training resumes from the last
    complete one (and returns at once if the run had finished). ``console`` (a rich Console) gets
    the truncation report and a progress bar; ``None`` trains silently.
    """
    from clues.model import attach_lora, base_model_id, load_model
    from clues.model.frozen_prefix import fill_prefix

    if not records:
        raise CluesError("no training records")
    run_dir = Path(out_dir)
    say = console.print if console is not None else (lambda *a, **k: None)
    base_model = base_model_id(config.model)
    fingerprint = data_fingerprint(records)
    steps_per_epoch, total_steps = plan(len(records), config)
    warmup = warmup_steps(total_steps, config.warmup_ratio)

    ckpt.remove_partial(run_dir)
    last = ckpt.latest_checkpoint(run_dir)
    start = 0
    if last is not None:
        meta = ckpt.load_checkpoint_meta(last)
        _check_resumable(meta, config, base_model, fingerprint, run_dir)
        start = int(meta["step"])
        if start >= total_steps:
            say(f"training already finished: {last}")
            return last
        say(f"resuming from {last} (step {start} of {total_steps})")

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model, tokenizer = load_model(config.model, dtype=DTYPES[config.dtype], device=config.device)
        encodings, report = encode_all(records, tokenizer, config.max_length, config.template)
        say(f"truncation (max_length={config.max_length}): {report.summary()}")
        model = attach_lora(model, config.lora_settings())
        model.train()
        if config.cache_frozen:
            frozen = fill_prefix(model, encodings, tokenizer.pad_token_id, config.batch_size)
            if frozen:
                say(f"layers 0-{frozen - 1} are frozen: their output is computed once per record and reused")
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            params,
            lr=config.lr,
            betas=(config.adam_beta1, config.adam_beta2),
            eps=config.adam_eps,
            weight_decay=config.weight_decay,
        )
        if last is not None:
            _restore(model, optimizer, last, start)
        for group in optimizer.param_groups:
            group["initial_lr"] = config.lr
        # last_epoch = start - 1: the constructor's own step() makes the lr that of step ``start``.
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_factor(s, total_steps, warmup), last_epoch=start - 1
        )
        say(
            f"{len(records)} records, {steps_per_epoch} steps/epoch, {total_steps} steps of "
            f"{config.records_per_step} records, lr {config.lr:g} (warm-up {warmup} steps), {config.dtype} on {config.device}"
        )
        return _loop(config, model, tokenizer, optimizer, scheduler, encodings, run_dir, start, total_steps,
                     steps_per_epoch, base_model, fingerprint, console, last)


def _loop(config, model, tokenizer, optimizer, scheduler, encodings, run_dir, start, total_steps,
          steps_per_epoch, base_model, fingerprint, console, last) -> Path:
    n = len(encodings)
    per_step = config.records_per_step
    order_epoch, order = -1, []
    lr_sum = loss_sum = 0.0
    lr_steps = loss_records = 0
    seen = 0
    started = time.perf_counter()
    with _progress(console) as progress:
        task = progress.add_task("train", total=total_steps, completed=start, loss="-", rate="-")
        for step in range(start, total_steps):
            epoch, position = divmod(step, steps_per_epoch)
            if epoch != order_epoch:
                order_epoch, order = epoch, epoch_order(n, config.seed, epoch)
            indices = order[position * per_step : (position + 1) * per_step]
            lr = optimizer.param_groups[0]["lr"]
            loss = optimizer_step(
                model, optimizer, _micro_batches(encodings, indices, config.batch_size, tokenizer.pad_token_id),
                config.max_grad_norm,
            )
            scheduler.step()
            lr_sum += lr
            lr_steps += 1
            loss_sum += loss * len(indices)
            loss_records += len(indices)
            seen += len(indices)
            done = step + 1
            rate = seen / max(time.perf_counter() - started, 1e-9)
            progress.update(task, completed=done, loss=f"{loss:.4f}", rate=f"{rate:.1f}")
            epoch_end = done % steps_per_epoch == 0
            due = done % config.save_every == 0 if config.save_every else epoch_end
            if due or done == total_steps:
                meta = {
                    "format": META_FORMAT,
                    "epoch": done / steps_per_epoch,
                    "lr": lr,
                    "lr_mean": lr_sum / lr_steps,
                    "lr_steps": lr_steps,
                    "train_loss": loss_sum / loss_records,
                    "base_model": base_model,
                    "config": config.to_dict(),
                    "total_steps": total_steps,
                    "steps_per_epoch": steps_per_epoch,
                    "optimizer": {
                        "name": "adamw",
                        "betas": [config.adam_beta1, config.adam_beta2],
                        "eps": config.adam_eps,
                        "weight_decay": config.weight_decay,
                    },
                    "precision": {"dtype": config.dtype, "loss": "float32", "device": config.device},
                    "data": {"records": n, "sha256": fingerprint},
                }
                last = ckpt.save_checkpoint(run_dir, done, model, optimizer, meta)
                if console is not None:
                    progress.console.print(
                        f"saved {last.name}: epoch {meta['epoch']:.2f}, train loss {meta['train_loss']:.4f}, "
                        f"lr_mean {meta['lr_mean']:.3g}"
                    )
                lr_sum = loss_sum = 0.0
                lr_steps = loss_records = 0
    return last
