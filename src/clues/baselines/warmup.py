"""The warm-up run as the gradient baselines (DataInf, LESS) see it: its model, checkpoints and encodings.

Both score with the silo's warm-up training run, encoded exactly as :func:`clues.scoring.engine.score_run`
encodes (the run's own max_length and template), so every gradient method sees the same tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from clues import checkpoint as ckpt
from clues.data.records import Record
from clues.errors import CluesError
from clues.scoring.engine import Scorer, compact_encodings, load_scoring_model


@dataclass
class WarmupScoring:
    """A scorer on the warm-up run's model and every record set encoded as the run trained."""

    checkpoints: list[Path]
    scorer: Scorer
    base: str
    validation: list[dict]
    sets: dict[str, list[dict]]


def open_warmup(inputs, record_sets: Mapping[str, Sequence[Record]], method: str, last_only: bool = False) -> WarmupScoring:
    """Load the warm-up run (its last checkpoint's adapter if ``last_only``, else its first) and encode
    the validation and record sets with the run's own max_length and template, as :func:`score_run` does."""
    run = inputs.warmup_run(method)
    checkpoints = ckpt.list_checkpoints(run)
    if not checkpoints:
        raise CluesError(f"{run}: no complete checkpoint (checkpoint-<step>/ with trainer_meta.json) to score {method} with")
    if not inputs.validation:
        raise CluesError(f"{method} needs validation records, and the validation set is empty")
    if last_only:
        checkpoints = checkpoints[-1:]
    settings = inputs.settings
    model, tokenizer, meta = load_scoring_model(checkpoints, inputs.base_model, settings.device)
    base = inputs.base_model or meta.get("base_model") or "?"
    config = meta.get("config") or {}
    max_length, template = int(config.get("max_length", 256)), config.get("template", "alpaca")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    scorer = Scorer.for_model(model, pad_id, settings.params, settings.batch_size)
    val_enc = compact_encodings(inputs.validation, tokenizer, max_length, template)
    sets = {name: compact_encodings(records, tokenizer, max_length, template) for name, records in record_sets.items()}
    if inputs.console is not None:
        cut = sum(1 for encs in [val_enc, *sets.values()] for e in encs if e["truncated"])
        if cut:
            inputs.console.print(f"[yellow]{cut} records truncated to max_length={max_length} (the training run's limit)[/yellow]")
    return WarmupScoring(checkpoints, scorer, base, val_enc, sets)


