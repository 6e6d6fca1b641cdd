"""The one loss of the project: per record, the mean cross-entropy over its own response tokens.

Prompt and padding tokens carry label -100 and count for nothing; each record is normalised by its
own number of response tokens (not by the batch's), so a batch's per-record losses equal the
batch-size-1 losses and a long answer does not outweigh a short one. The ``tail`` reduction (the
worst tenth of a record's response tokens) is the same loss read differently, for the ``tail``
selection baseline (:mod:`clues.baselines.likelihood`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clues.data.template import IGNORE_INDEX


# Reductions of a record's response-token losses: their mean (the project loss), or the mean of the
# worst tenth of them ("tail": a record that is fluent but for a few absurd tokens, such as a word
# swapped for noise or an answer cut mid-word, shows there before it moves the mean).
REDUCTIONS = ("mean", "tail")
TAIL_DIVISOR = 10  # the tail is the worst len // 10 tokens of a record, and at least one


def reduce_tokens(token_loss: torch.Tensor, mask: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Per-record reduction of ``token_loss`` over the ``mask``ed positions: ``[batch, seq]`` -> ``[batch]``.

    Each row is reduced over its own tokens only, so a row's value does not depend on its batch.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
    counts = mask.sum(dim=1)
    if bool((counts == 0).any()):
        raise ValueError("a record in the batch has no response token to compute a loss on")
    if reduction == "mean":
        return (token_loss * mask).sum(dim=1) / counts
    worst_first = token_loss.masked_fill(~mask, float("-inf")).sort(dim=1, descending=True).values
    take = torch.clamp(counts // TAIL_DIVISOR, min=1)
    within = torch.arange(worst_first.size(1), device=token_loss.device)[None, :] < take[:, None]
    return worst_first.masked_fill(~within, 0.0).sum(dim=1) / take


def per_record_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Mean response-token loss of each record: ``[batch, seq, vocab]``, ``[batch, seq]`` -> ``[batch]``.

    Token t predicts label t+1 (causal LM shift). A record without any response token is an error:
    its loss would be undefined, and silently calling it zero would corrupt a mean.
    """
    shifted_logits = logits[:, :-1, :].float()
    shifted_labels = labels[:, 1:]
    mask = shifted_labels != IGNORE_INDEX
    token_loss = F.cross_entropy(
        shifted_logits.reshape(-1, shifted_logits.size(-1)),
        shifted_labels.clamp(min=0).reshape(-1),
        reduction="none",
    ).view_as(shifted_labels)
    return reduce_tokens(token_loss, mask, reduction)


def response_losses(hidden: torch.Tensor, head: torch.nn.Module, labels: torch.Tensor,
                    reduction: str = "mean") -> torch.Tensor:
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
    if reduction != "mean":  # the token losses back in their places, then the shared reduction
        placed = torch.zeros(shifted_labels.shape, dtype=token_loss.dtype, device=token_loss.device)
        placed[rows, cols] = token_loss
        return reduce_tokens(placed, mask, reduction)
    sums = torch.zeros(labels.shape[0], dtype=token_loss.dtype, device=token_loss.device).index_add(0, rows, token_loss)
    return sums / counts


def batch_record_losses(model, batch: dict[str, torch.Tensor], reduction: str = "mean") -> torch.Tensor:
    """Forward a padded batch (from :func:`clues.data.batching.pad_batch`) and return per-record losses
    (``reduction``: see :data:`REDUCTIONS`).

    Runs through :func:`clues.model.frozen_prefix.record_losses`: response-only logits where the
    architecture allows, and the cached frozen prefix when the batch carries one.
    """
    from clues.model.frozen_prefix import record_losses

    return record_losses(model, batch, reduction)
