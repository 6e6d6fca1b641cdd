"""``rds``: representation-based data selection (RDS+; Ivison et al. 2025, "Large-Scale Data Selection
for Instruction Tuning"), scored by the base model with no adapter.

A record's embedding is a position-weighted mean of the base model's final hidden states over all its
tokens, prompt and response (encoded with the project template, :func:`clues.data.encode`): token t
of T weighs t / (1 + ... + T). In a causal model a later token has seen more of the text, so its
state summarises more of it; this is the pooling RDS+ found best. Embeddings are L2-normalised.

The score of a record is the maximum, over validation domains, of its mean cosine with that domain's
validation records. With unit vectors that mean is a dot product with the domain's mean validation
embedding, so each domain is summarised once. Taking the maximum (not the mean) over domains lets a
silo's records match whichever public domain they belong to. Records without a domain form one group.

The final hidden state is ``hidden_states[-1]`` of a forward with ``output_hidden_states=True``. For
Hugging Face Llama this is the output of the final RMSNorm, the same tensor as the decoder's
``last_hidden_state`` and the input of the LM head (a test pins this). Batches are right-padded, so
under causal attention a real token never sees padding and batched embeddings equal batch-size-1 ones.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Mapping, Sequence

import torch

from clues.data.batching import length_sorted_batches, pad_batch
from clues.data.records import Record
from clues.data.template import encode_all, padding_id
from clues.errors import CluesError
from clues.evaluate import domain_of


def pooled(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Position-weighted mean of ``[batch, seq, dim]`` states over real tokens, L2-normalised, float64.

    With right padding a record's real tokens sit at positions 1..T, so position t gets weight t.
    """
    mask = attention_mask.to(torch.float64)
    weights = torch.cumsum(mask, dim=1) * mask  # 1..T on real tokens, 0 on padding
    weights = weights / weights.sum(dim=1, keepdim=True)
    embedding = (hidden.to(torch.float64) * weights.unsqueeze(-1)).sum(dim=1)
    return torch.nn.functional.normalize(embedding, dim=1)


def embed(model, tokenizer, records: Sequence[Record], max_length: int, batch_size: int, template: str,
          console=None) -> torch.Tensor:
    """Unit embeddings ``[len(records), hidden]`` (float64, on the CPU) of records, in input order."""
    encodings, _ = encode_all(records, tokenizer, max_length, template, console=console)
    pad_id = padding_id(tokenizer)
    device = next(model.parameters()).device
    rows: list[torch.Tensor | None] = [None] * len(encodings)
    with torch.no_grad():
        for indices in length_sorted_batches([len(e["input_ids"]) for e in encodings], batch_size):
            batch = pad_batch([encodings[i] for i in indices], pad_id)
            mask = batch["attention_mask"].to(device)
            out = model(input_ids=batch["input_ids"].to(device), attention_mask=mask, output_hidden_states=True)
            for i, row in zip(indices, pooled(out.hidden_states[-1], mask).cpu()):
                rows[i] = row
    if not rows:
        return torch.zeros((0, model.config.hidden_size), dtype=torch.float64)
    return torch.stack(rows)


def domain_centroids(embeddings: torch.Tensor, records: Sequence[Record]) -> torch.Tensor:
    """``[domains, hidden]``: the mean unit embedding of each validation domain (not renormalised,
    so a dot product with it is the mean cosine with the domain's records)."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, record in enumerate(records):
        groups[domain_of(record)].append(i)
    return torch.stack([embeddings[idx].mean(dim=0) for _, idx in sorted(groups.items())])


def rds_scores(inputs, record_sets: Mapping[str, Sequence[Record]]) -> dict[str, torch.Tensor]:
    """``{set: max over validation domains of the mean cosine with that domain}`` per record, float64."""
    from clues.model import load_model

    if not inputs.validation:
        raise CluesError("method 'rds' needs validation records to compare the silo's records with")
    model, tokenizer = load_model(inputs.base_model, device=inputs.settings.device)
    args = (inputs.max_length, inputs.settings.batch_size, inputs.template, inputs.console)
    centroids = domain_centroids(embed(model, tokenizer, inputs.validation, *args), inputs.validation)
    scores = {}
    for name, records in record_sets.items():
        cosines = embed(model, tokenizer, records, *args) @ centroids.T
        scores[name] = cosines.max(dim=1).values if len(records) else torch.zeros(0, dtype=torch.float64)
    return scores
