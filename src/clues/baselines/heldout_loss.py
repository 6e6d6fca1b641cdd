"""``loss``: minus a record's loss under a fine-tuned model that never trained on that record.

The first thing a practitioner tries (Chong et al. 2022, "Detecting label errors by using
pre-trained language models"): fine-tune on the data, then rank records by their loss; mislabelled
or corrupted records are the ones the model still finds surprising. The loss must be out of sample:
the silo's warm-up run has trained on every record for several epochs and has partly memorised the
bad ones, and its in-sample losses are not comparable with those of the public anchors that set the
threshold. So the silo cross-fits: its records are split in two halves by a seeded permutation, a
run with the warm-up's own training settings is trained on each half, and every record is scored by
the run that did not see it. The anchors are scored by both runs (their losses averaged): out of
sample for both, like every record.

Cost: two training runs on half the records each (one warm-up's worth), written next to the warm-up
run and resumable like it; then one forward pass per record and anchor.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Mapping, Sequence

import torch

from clues import checkpoint as ckpt
from clues.data.records import Record
from clues.errors import CluesError

FOLDS = 2


def _folds(count: int, seed: int) -> list[list[int]]:
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()
    return [sorted(order[k::FOLDS]) for k in range(FOLDS)]


def _fold_losses(run_dir, config, records: Sequence[Record], inputs) -> list[float]:
    """The project loss of each record under the last checkpoint of ``run_dir``."""
    from peft import PeftModel

    from clues.evaluate import record_losses
    from clues.model import load_model
    from clues.model.lora import peft_quietly

    model, tokenizer = load_model(config.model, device=inputs.settings.device)
    with peft_quietly():
        model = PeftModel.from_pretrained(model, str(ckpt.latest_checkpoint(run_dir)))
    return record_losses(model, tokenizer, records, config.max_length, inputs.settings.batch_size, config.template)


def heldout_loss_scores(inputs, record_sets: Mapping[str, Sequence[Record]]) -> dict[str, torch.Tensor]:
    from clues.train import TrainConfig, train

    warmup = inputs.warmup_run("loss")
    last = ckpt.latest_checkpoint(warmup)
    if last is None:
        raise CluesError(f"{warmup}: no complete checkpoint of the warm-up run to take the training settings from")
    config = TrainConfig.from_dict({**ckpt.load_checkpoint_meta(last)["config"], "model": inputs.base_model})
    records = list(record_sets["data"])
    if len(records) < FOLDS:
        raise CluesError(f"method 'loss' cross-fits on {FOLDS} halves of the silo's records and needs at least {FOLDS}")
    folds = _folds(len(records), config.seed)
    others = {name: list(rs) for name, rs in record_sets.items() if name != "data"}
    data = torch.zeros(len(records), dtype=torch.float64)
    public = {name: torch.zeros(len(rs), dtype=torch.float64) for name, rs in others.items()}
    for k, fold in enumerate(folds):
        run_dir = warmup.parent / f"{warmup.name}-heldout-{k}"
        train(replace(config, save_every=None), [records[i] for i in fold], run_dir, console=inputs.console)
        seen = set(fold)
        unseen = [i for i in range(len(records)) if i not in seen]
        losses = _fold_losses(run_dir, config, [records[i] for i in unseen] + [r for rs in others.values() for r in rs], inputs)
        data[unseen] = -torch.tensor(losses[: len(unseen)], dtype=torch.float64)
        offset = len(unseen)
        for name, rs in others.items():
            public[name] -= torch.tensor(losses[offset : offset + len(rs)], dtype=torch.float64) / FOLDS
            offset += len(rs)
    return {"data": data, **public}
