"""``perplexity``, ``tail`` and ``ifd``: likelihood baselines, scored by the base model with no adapter.

Both reuse the project's one template, loss mask and per-record loss (:func:`clues.data.encode`,
:func:`clues.loss.batch_record_losses`), so "the loss of the response given the instruction" means
exactly the loss CLUES trains and evaluates with. Batches are right-padded and every record is
normalised by its own response-token count, so batched scores equal batch-size-1 scores.

**perplexity** scores ``-loss(response | instruction, input)``: minus the log-perplexity, so a lower
perplexity keeps. We threshold on log-perplexity rather than on perplexity itself: the anchor
threshold is a mean of anchor scores, and a mean of log-perplexities is the log of their geometric
mean, which one outlying anchor (a perplexity in the thousands) cannot drag far.

**tail** scores minus the mean loss of the record's worst tenth of response tokens (at least one;
:func:`clues.loss.reduce_tokens`). A mean over a long answer hides a few absurd tokens: a word
swapped for noise, an answer cut mid-sentence. Measured on SmolLM2 (``benchmarks/signals.py``,
design seeds 1-3) it ranks truncated answers better than perplexity does (0.82 vs 0.79 AUROC), and
it gave the best three-way fusion on the design seed.

**ifd** (instruction-following difficulty; Li et al. 2024, "From Quantity to Quality", Cherry LLM) is
``loss(response | instruction, input) / loss(response alone)``, and we score ``-IFD``: a *low* IFD
keeps. Cherry LLM keeps *high* IFD, but it ranks data that is already clean, where a high IFD marks a
hard, instructive example. Our silos hold low-quality records (the answer of another question, an
answer in another language, random noise, a truncated answer): their response has nothing to do with
the instruction, so conditioning on the instruction does not help and IFD goes to 1 or above. Cherry
LLM itself discards IFD > 1 as misaligned. In a polluted pool, then, IFD mostly measures alignment
between instruction and answer, and lower is better.

"Response alone" is the conditioned encoding with the prompt removed and nothing else changed: the
very response tokens the conditioned encoding scores (after any truncation ``encode`` applied, end of
sequence included), preceded by one start token so that the first response token is predicted too.
Both losses then average over identical tokens and differ only by the prompt. The start token is the
tokenizer's BOS, or its EOS when it has none (GPT-2-style models, the shipped default model among
them, are trained on documents separated by EOS, so what follows EOS is the start of a text). We do
not encode a record with an empty instruction instead: in the alpaca template it would still carry
the template header and "### Response:", which is a prompt.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from clues.data.records import Record
from clues.data.template import IGNORE_INDEX, encode_all, padding_id
from clues.evaluate import encoded_losses, record_losses

# The score of a record whose response alone has zero loss (IFD undefined): that of IFD = 1, the
# value at which the instruction neither helps nor hurts.
ZERO_DENOMINATOR_SCORE = -1.0


def _base_model(inputs):
    from clues.model import load_model

    return load_model(inputs.base_model, device=inputs.settings.device)


def _conditioned_losses(model, tokenizer, records: Sequence[Record], inputs, reduction: str = "mean") -> list[float]:
    """The project loss of each record's response given its prompt (``reduction="tail"``: its worst tokens)."""
    return record_losses(model, tokenizer, records, inputs.max_length, inputs.settings.batch_size,
                         inputs.template, inputs.console, reduction=reduction)


def start_token(tokenizer) -> int:
    """The one token placed before a response scored without its prompt: BOS, else EOS."""
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def response_alone(encoding: dict, start: int) -> dict:
    """The encoding of :func:`clues.data.encode` with its prompt replaced by the single ``start`` token."""
    response = [t for t in encoding["labels"] if t != IGNORE_INDEX]
    return {"input_ids": [start] + response, "labels": [IGNORE_INDEX] + response}


def _response_alone_losses(model, tokenizer, records: Sequence[Record], inputs) -> list[float]:
    if not records:
        return []
    encodings, _ = encode_all(records, tokenizer, inputs.max_length, inputs.template)
    start = start_token(tokenizer)
    pad_id = padding_id(tokenizer)
    return encoded_losses(model, [response_alone(e, start) for e in encodings], pad_id, inputs.settings.batch_size)


def ifd_score(conditioned: float, alone: float) -> float:
    """``-conditioned / alone``; :data:`ZERO_DENOMINATOR_SCORE` when ``alone`` is not positive (never NaN)."""
    if not alone > 0.0:
        return ZERO_DENOMINATOR_SCORE
    return -conditioned / alone


def perplexity_scores(inputs, record_sets: Mapping[str, Sequence[Record]]) -> dict[str, torch.Tensor]:
    """``{set: -loss(response | prompt)}`` per record (minus the log-perplexity), float64."""
    model, tokenizer = _base_model(inputs)
    return {
        name: -torch.tensor(_conditioned_losses(model, tokenizer, records, inputs), dtype=torch.float64)
        for name, records in record_sets.items()
    }


def tail_scores(inputs, record_sets: Mapping[str, Sequence[Record]]) -> dict[str, torch.Tensor]:
    """``{set: -mean loss of the worst tenth of response tokens given the prompt}`` per record, float64."""
    model, tokenizer = _base_model(inputs)
    return {
        name: -torch.tensor(_conditioned_losses(model, tokenizer, records, inputs, "tail"), dtype=torch.float64)
        for name, records in record_sets.items()
    }


def ifd_scores(inputs, record_sets: Mapping[str, Sequence[Record]]) -> dict[str, torch.Tensor]:
    """``{set: -IFD}`` per record, IFD = loss(response | prompt) / loss(response alone), float64."""
    model, tokenizer = _base_model(inputs)
    scores = {}
    for name, records in record_sets.items():
        conditioned = _conditioned_losses(model, tokenizer, records, inputs)
        alone = _response_alone_losses(model, tokenizer, records, inputs)
        scores[name] = torch.tensor([ifd_score(c, a) for c, a in zip(conditioned, alone)], dtype=torch.float64)
    return scores
