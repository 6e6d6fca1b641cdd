"""The one loss of the project: per record, the mean cross-entropy over its own response tokens.

Prompt and padding tokens carry label -100 and count for nothing; each record is normalised by its
own number of response tokens (not by the batch's), so a batch's per-record losses equal the
batch-size-1 losses and a long answer does not outweigh a short one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clues.data.template import IGNORE_INDEX


def per_record_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean response-token loss of each record: ``[batch, seq, vocab]``, ``[batch, seq]`` -> ``[batch]``.

    Token t predicts label t+1 (causal LM shift). A record without any response token is an error:
    its loss would be undefined, and silently calling it zero would corrupt a mean.
    """
    shifted_logits = logits[:, :-1, :].float()
    shifted_labels = labels[:, 1:]
    mask = shifted_labels != IGNORE_INDEX
    counts = mask.sum(dim=1)
    if bool((counts == 0).any()):
        raise ValueError("a record in the batch has no response token to compute a loss on")
    token_loss = F.cross_entropy(
        shifted_logits.reshape(-1, shifted_logits.size(-1)),
        shifted_labels.clamp(min=0).reshape(-1),
        reduction="none",
    ).view_as(shifted_labels)
    return (token_loss * mask).sum(dim=1) / counts


def batch_record_losses(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Forward a padded batch (from :func:`clues.data.batching.pad_batch`) and return per-record losses."""
    device = next(model.parameters()).device
    logits = model(
        input_ids=batch["input_ids"].to(device),
        attention_mask=batch["attention_mask"].to(device),
    ).logits
    return per_record_loss(logits, batch["labels"].to(device))
