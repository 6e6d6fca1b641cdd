"""`clues train`: LoRA fine-tuning on one record file, with checkpoints that scoring can trace."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from clues.data.template import DEFAULT_MAX_LENGTH
from clues.errors import CluesError

console = Console()


def train(
    data: Path = typer.Option(..., "--data", help="JSONL or JSON file of training records."),
    out: Path = typer.Option(..., "--out", help="Run folder; checkpoints go to OUT/checkpoint-<step>/. Rerun to resume."),
    model: str = typer.Option("default", "--model", help="'default', 'smollm2-135m' or a local Hugging Face model folder."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Epochs (default 3; exclusive with --max-steps)."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Optimizer steps instead of epochs."),
    lr: float = typer.Option(1e-3, "--lr", help="Peak learning rate (the paper's 2e-5 suits 7B models; small ones need more)."),
    batch_size: int = typer.Option(16, "--batch-size", help="Records per forward pass (micro-batch)."),
    grad_accum: int = typer.Option(1, "--grad-accum", help="Micro-batches per optimizer step."),
    warmup_ratio: float = typer.Option(0.03, "--warmup-ratio", help="Share of the steps used for linear warm-up."),
    lora_r: int = typer.Option(16, "--lora-r"),
    lora_alpha: int = typer.Option(16, "--lora-alpha"),
    lora_dropout: float = typer.Option(0.05, "--lora-dropout"),
    lora_targets: Optional[str] = typer.Option(None, "--lora-targets", help="Comma-separated module names (default: q and v projections)."),
    lora_layers: Optional[int] = typer.Option(None, "--lora-layers", help="Adapt only the top N decoder layers (default: all); the frozen ones run once per record."),
    max_length: int = typer.Option(DEFAULT_MAX_LENGTH, "--max-length", help="Tokens per record; longer ones are truncated (reported)."),
    save_every: Optional[int] = typer.Option(None, "--save-every", help="Checkpoint every N optimizer steps (default: every epoch)."),
    seed: int = typer.Option(0, "--seed"),
    template: str = typer.Option("alpaca", "--template", help="Prompt template: alpaca or chat (the tokenizer's)."),
) -> None:
    """Fine-tune a LoRA adapter; save adapter, AdamW moments and learning rates at every checkpoint."""
    from clues.data.records import load_records
    from clues.train import TrainConfig, train as run_training

    if epochs is not None and max_steps is not None:
        raise CluesError("give either --epochs or --max-steps, not both")
    config = TrainConfig(
        model=model,
        epochs=epochs,
        max_steps=max_steps,
        lr=lr,
        batch_size=batch_size,
        grad_accum=grad_accum,
        warmup_ratio=warmup_ratio,
        lora_r=lora_r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        lora_targets=lora_targets,
        lora_layers=lora_layers,
        max_length=max_length,
        save_every=save_every,
        seed=seed,
        template=template,
    )
    records = load_records(data)
    try:
        final = run_training(config, records, out, console=console)
    except KeyboardInterrupt:
        console.print(f"[yellow]interrupted: rerun the same command to resume from the last checkpoint in {out}[/yellow]")
        raise
    console.print(f"[green]✓[/green] final checkpoint: {final}")
