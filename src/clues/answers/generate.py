"""Greedy answers to the test questions, batched with a KV cache.

The prompt is the project's one template (:func:`clues.data.template.render_prompt`), tokenized as
training tokenizes it, so a model is asked exactly what it was trained to answer. Prompts are left
padded (the answer of every row starts at the same position). The token budget of an answer is set
per domain from its reference answers' lengths (:func:`token_budgets`): a budget far above the
references lets a run-on answer look longer than it is, one below them cuts good answers; one batch
holds every domain, each row ended at its own budget. Greedy decoding makes every answer a function of the
model and the prompt only; batching changes nothing but the speed (tested against batch size 1).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

import torch

from clues.data.records import Record
from clues.data.template import cut_prompt, padding_id, prompt_tokens, response_tokens
from clues.evaluate import domain_of
from clues.stats import order_quantile

# An answer may run this much longer than the domain's long reference answers before it is cut.
BUDGET_FACTOR = 1.25
# The reference length (in tokens) the budget starts from: this quantile of the domain's references.
BUDGET_QUANTILE = 0.9
# No answer gets more new tokens than this, whatever its references: decoding is the slowest part of evaluation.
MAX_NEW_TOKENS = 128
MIN_NEW_TOKENS = 8


@dataclass(frozen=True)
class Answer:
    """One generated answer: its text, and whether the model ended it (end-of-sequence) within its budget."""

    text: str
    stopped: bool
    tokens: int


def token_budgets(records: Sequence[Record], tokenizer, cap: int) -> dict[str, int]:
    """``max_new_tokens`` per domain: :data:`BUDGET_FACTOR` times the :data:`BUDGET_QUANTILE` quantile of
    the reference answers' token counts (end-of-sequence included), at least :data:`MIN_NEW_TOKENS`,
    at most ``cap``."""
    lengths: dict[str, list[int]] = defaultdict(list)
    for record in records:
        lengths[domain_of(record)].append(len(response_tokens(record, tokenizer)))
    return {domain: max(MIN_NEW_TOKENS, min(cap, math.ceil(BUDGET_FACTOR * order_quantile(values, BUDGET_QUANTILE))))
            for domain, values in sorted(lengths.items())}


def prompt_ids(record: Record, tokenizer, budget: int, template: str = "alpaca") -> list[int]:
    """The record's prompt tokens, cut like training cuts them (head and response marker kept) to ``budget``."""
    return cut_prompt(prompt_tokens(record, tokenizer, template), budget)


def _batches(lengths: list[int], size: int) -> list[list[int]]:
    ordered = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    return [ordered[start : start + size] for start in range(0, len(ordered), size)]


class _RowBudgets:
    """A logits processor that ends each row (end-of-sequence forced) once it has its own budget of new tokens.

    One batch can then hold the questions of every domain: decoding a small model on a CPU is bound
    by reading the weights, so a step costs nearly the same for 16 rows as for 128, and a finished
    row costs nothing that matters.
    """

    def __init__(self, budgets: list[int], width: int, eos: int):
        self.budgets = torch.tensor(budgets)
        self.width = width
        self.eos = eos

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        done = (input_ids.shape[1] - self.width) >= self.budgets.to(scores.device)
        if done.any():
            scores = scores.clone()
            scores[done] = -math.inf
            scores[done, self.eos] = 0.0
        return scores


def generate_answers(model, tokenizer, records: Sequence[Record], budgets: dict[str, int], max_length: int,
                     batch_size: int = 64, template: str = "alpaca") -> list[Answer]:
    """Greedy answers of ``model`` to ``records`` (in input order), ``budgets[domain]`` new tokens at most.

    Prompts are cut so that prompt plus answer fit in ``max_length`` tokens. An answer is
    ``stopped`` when the model wrote end-of-sequence before its budget ran out.
    """
    from transformers import GenerationConfig, LogitsProcessorList

    eos, pad = tokenizer.eos_token_id, padding_id(tokenizer)
    device = next(model.parameters()).device
    budget_of = [budgets[domain_of(r)] for r in records]
    prompts = [prompt_ids(r, tokenizer, max(1, max_length - b), template) for r, b in zip(records, budget_of)]
    lengths = [len(p) for p in prompts]
    answers: list[Answer | None] = [None] * len(records)
    was_training = model.training
    model.eval()
    try:
        for batch in _batches(lengths, batch_size):
            width = max(lengths[i] for i in batch)
            ids = torch.tensor([[pad] * (width - lengths[i]) + prompts[i] for i in batch], device=device)
            mask = torch.tensor([[0] * (width - lengths[i]) + [1] * lengths[i] for i in batch], device=device)
            rows = [budget_of[i] for i in batch]
            config = GenerationConfig(max_new_tokens=max(rows), do_sample=False, num_beams=1, eos_token_id=eos,
                                      pad_token_id=pad, use_cache=True)
            with torch.no_grad():
                out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config,
                                     logits_processor=LogitsProcessorList([_RowBudgets(rows, width, eos)]))
            for row, budget, i in zip(out[:, width:].tolist(), rows, batch):
                row = row[:budget]
                stopped = eos in row
                tokens = row[: row.index(eos)] if stopped else row
                answers[i] = Answer(tokenizer.decode(tokens, skip_special_tokens=True), stopped, len(tokens))
    finally:
        model.train(was_training)
    return answers
