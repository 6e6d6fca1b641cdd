"""Padding encoded records into batches.

Right padding keeps every real token at the position it has when the record is alone, and padded
positions get label -100 and attention 0, so a record's loss and gradient never depend on what it
is batched with.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch

from clues.data.template import IGNORE_INDEX


def pad_batch(encodings: Sequence[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Stack encodings (from :func:`clues.data.encode`) into right-padded tensors."""
    if not encodings:
        raise ValueError("cannot pad an empty batch")
    width = max(len(e["input_ids"]) for e in encodings)
    input_ids = torch.full((len(encodings), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(encodings), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(encodings), width), dtype=torch.long)
    for row, enc in enumerate(encodings):
        n = len(enc["input_ids"])
        input_ids[row, :n] = torch.tensor(enc["input_ids"], dtype=torch.long)
        labels[row, :n] = torch.tensor(enc["labels"], dtype=torch.long)
        attention_mask[row, :n] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    layers = {e.get("prefix_layer") for e in encodings}
    if layers != {None}:
        # Cached hidden states of the frozen bottom layers (clues.model.frozen_prefix): all or none.
        if len(layers) != 1:
            raise ValueError("a batch mixes records with and without (or with different) cached hidden states")
        first = encodings[0]["prefix"]
        prefix = torch.zeros((len(encodings), width, first.shape[-1]), dtype=first.dtype)
        for row, enc in enumerate(encodings):
            prefix[row, : len(enc["input_ids"])] = enc["prefix"]
        batch["prefix"], batch["prefix_layer"] = prefix, layers.pop()
    return batch


def index_batches(count: int, batch_size: int) -> Iterator[range]:
    """Consecutive index ranges covering ``range(count)``, in order."""
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    for start in range(0, count, batch_size):
        yield range(start, min(start + batch_size, count))


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Batches of indices grouped by length (less padding, same results); callers restore input order."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    return [order[r.start : r.stop] for r in index_batches(len(order), batch_size)]
