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


def response_losses(hidden: torch.Tensor, head: torch.nn.Module, labels: torch.Tensor) -> torch.Tensor:
    """:func:`per_record_loss` of ``head(hidden)``, with the head applied to response positions only.

    ``hidden`` is the decoder's final hidden state ``[batch, seq, width]``; position t enters the
    loss only if label t+1 is a response token, so only those rows go through the (large) LM head.
    Same numbers as the full logits, to float rounding.
    """
    shifted_labels = labels[:, 1:]
    mask = shifted_labels != IGNORE_INDEX
    counts = mask.sum(dim=1)
    if bool((counts == 0).any()):
        raise ValueError("a record in the batch has no response token to compute a loss on")
    rows, cols = mask.nonzero(as_tuple=True)
    logits = head(hidden[rows, cols]).float()
    token_loss = F.cross_entropy(logits, shifted_labels[rows, cols], reduction="none")
    sums = torch.zeros(labels.shape[0], dtype=token_loss.dtype, device=token_loss.device).index_add(0, rows, token_loss)
    return sums / counts


def batch_record_losses(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Forward a padded batch (from :func:`clues.data.batching.pad_batch`) and return per-record losses.

    Runs through :func:`clues.model.frozen_prefix.record_losses`: response-only logits where the
    architecture allows, and the cached frozen prefix when the batch carries one.
    """
    from clues.model.frozen_prefix import record_losses

    return record_losses(model, batch)
