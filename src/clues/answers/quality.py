"""One condition's answer quality: its greedy answers to the test questions, every check of each, the
rates per domain, and the pass/fail vectors that let two conditions be compared answer by answer.

Besides the text checks (:mod:`clues.answers.checks`), an answer must be fluent: the base model (the
adapter switched off) must find it no less likely, per token and given its question, than it finds
nine in ten of that domain's reference answers. Word salad, shuffled words and answers to another
question fail that; a lexicon of real words cannot see a shuffle. The judge is the run's own base model, so
the ``perplexity`` selection baseline, which keeps what that model finds likely, is read by a judge
of its own kind: the verdict names the checks that moved, so a gain on fluency alone shows as such.
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import nullcontext
from dataclasses import replace
from typing import Sequence

from clues.answers.checks import Reference, check_answer, ends_properly, identify
from clues.answers.generate import MAX_NEW_TOKENS, generate_answers, token_budgets
from clues.data.records import Record
from clues.evaluate import domain_of, parse_question, record_losses
from clues.stats import order_quantile

# The checks an answer must pass, in report order.
CHECKS = ("language", "complete", "fluent", "relevant")
# A domain asks for sentence ends when at least this share of its reference answers end with one.
SENTENCE_DOMAIN_SHARE = 0.5
# Fluent: no less likely under the base model than this quantile of the domain's reference answers.
FLUENT_QUANTILE = 0.9


def references(test: Sequence[Record]) -> list[Reference]:
    """What each test record's answer is checked against (see :class:`clues.answers.checks.Reference`)."""
    questions = [parse_question(r) for r in test]
    ends: dict[str, list[bool]] = defaultdict(list)
    for record, question in zip(test, questions):
        if question is None:
            ends[domain_of(record)].append(ends_properly(record.output))
    sentence = {d: sum(v) / len(v) >= SENTENCE_DOMAIN_SHARE for d, v in ends.items()}
    return [Reference(record.output, record.language or identify(record.output),
                      question.options if question else (), question.answer if question else None,
                      sentence_end=sentence.get(domain_of(record), False))
            for record, question in zip(test, questions)]


def fluency_limits(reference_losses: Sequence[float], test: Sequence[Record]) -> dict[str, float]:
    """Per domain, the base model's :data:`FLUENT_QUANTILE` quantile of the reference answers' losses."""
    by_domain: dict[str, list[float]] = defaultdict(list)
    for record, loss in zip(test, reference_losses):
        by_domain[domain_of(record)].append(loss)
    return {d: order_quantile(v, FLUENT_QUANTILE) for d, v in sorted(by_domain.items())}


def _base_model(model):
    """The adapter switched off (PEFT), or nothing to switch off."""
    return model.disable_adapter() if hasattr(model, "disable_adapter") else nullcontext()


def rates(test: Sequence[Record], rows: Sequence[dict]) -> dict:
    """Share of answers passing each check (and all of them), per domain and as the macro mean over domains."""
    out = {}
    for check in (*CHECKS, "passed"):
        by_domain: dict[str, list[float]] = defaultdict(list)
        for record, row in zip(test, rows):
            value = row["passed"] if check == "passed" else row["passes"].get(check)
            if value is not None:
                by_domain[domain_of(record)].append(float(value))
        per_domain = {d: sum(v) / len(v) for d, v in sorted(by_domain.items())}
        out[check] = {"per_domain": per_domain,
                      "mean": sum(per_domain.values()) / len(per_domain) if per_domain else None}
    return out


def answer_quality(model, tokenizer, test: Sequence[Record], max_length: int, batch_size: int = 64,
                   template: str = "alpaca", prefix_start: int | None = None) -> dict:
    """Generate, check and summarise one condition's answers (the ``answers`` entry of results.json).

    ``rows`` keeps, in test-record order, each answer's text and checks; ``passed`` the 0/1 outcome
    of each (all checks passed), which the verdict pairs across conditions.
    """
    budgets = token_budgets(test, tokenizer, MAX_NEW_TOKENS)
    answers = generate_answers(model, tokenizer, test, budgets, max_length, batch_size, template)
    written = [replace(r, output=a.text or " ") for r, a in zip(test, answers)]
    with _base_model(model):
        base = record_losses(model, tokenizer, [*test, *written], max_length, batch_size, template,
                             prefix_start=prefix_start)
    limits = fluency_limits(base[: len(test)], test)
    rows = []
    for record, reference, answer, loss in zip(test, references(test), answers, base[len(test):]):
        fluent = loss <= limits[domain_of(record)]
        row = check_answer(answer.text, reference, stopped=answer.stopped, fluent=fluent)
        rows.append({"id": record.id, "domain": domain_of(record), "question": record.input or record.instruction,
                     "answer": answer.text, "stopped": answer.stopped,
                     "tokens": answer.tokens, "base_loss": loss, **row})
    return {"budgets": budgets, "fluency_limits": limits, "rates": rates(test, rows),
            "passed": [float(r["passed"]) for r in rows], "rows": rows}
