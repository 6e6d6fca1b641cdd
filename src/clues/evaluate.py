"""Held-out evaluation: per-domain test loss, multiple-choice accuracy, the quality probe and the
oracle gain recovered.

Everything here scores text with the project's one template, loss mask and per-record loss
(:func:`clues.data.encode` and :func:`clues.loss.batch_record_losses`), so a test loss is measured
exactly like the training and scoring losses (the authors' scripts used a different template and
mask for each stage; CLUES.md section 6). Batches are length-sorted to save padding; right padding
and the per-record normalisation make every batched number equal to its batch-size-1 value.
Selection metrics (precision, recall, F1, accuracy, AUROC against labels) live in :mod:`clues.metrics`.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Mapping, Sequence

import torch

from clues.data.batching import length_sorted_batches, pad_batch
from clues.data.records import Record
from clues.data.template import DEFAULT_MAX_LENGTH, encode_all, padding_id
from clues.errors import CluesError
from clues.io import read_rows
from clues.loss import batch_record_losses
from clues.model.frozen_prefix import fill_prefix
from clues.stats import clearly_above

# Records without a ``domain`` field are grouped under this name.
DEFAULT_DOMAIN = "all"


def domain_of(record: Record) -> str:
    return record.domain or DEFAULT_DOMAIN


@contextmanager
def _eval_mode(model):
    """Dropout off while evaluating (LoRA dropout would make losses random), then restore the caller's mode."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def encoded_losses(model, encodings: Sequence[dict], pad_token_id: int, batch_size: int,
                   prefix_start: int | None = None, reduction: str = "mean") -> list[float]:
    """Per-record losses of already encoded records, in input order (``reduction``: :data:`clues.loss.REDUCTIONS`).

    ``prefix_start``: the layer whose input the frozen-prefix cache holds for every condition
    evaluated (the run's first LoRA layer), so that the base model and every adapter share it."""
    losses = [0.0] * len(encodings)
    lengths = [len(e["input_ids"]) for e in encodings]
    with torch.no_grad(), _eval_mode(model):
        # Conditions whose adapters share one LoRA layout share the frozen layers' output too.
        encodings = [dict(e) for e in encodings]
        fill_prefix(model, encodings, pad_token_id, batch_size, start=prefix_start)
        for indices in length_sorted_batches(lengths, batch_size):
            batch = pad_batch([encodings[i] for i in indices], pad_token_id)
            for i, loss in zip(indices, batch_record_losses(model, batch, reduction).tolist()):
                losses[i] = loss
    return losses


def record_losses(
    model, tokenizer, records: Sequence[Record], max_length: int = DEFAULT_MAX_LENGTH, batch_size: int = 16,
    template: str = "alpaca", console=None, prefix_start: int | None = None, reduction: str = "mean",
) -> list[float]:
    """The project loss of each record (mean over its response tokens), in input order, without gradients;
    ``reduction="tail"``: the mean of its worst tenth of response tokens instead (:func:`clues.loss.reduce_tokens`).

    ``console`` (a rich Console) gets the truncation summary when any record had to be cut.
    """
    if not records:
        return []
    encodings, _ = encode_all(records, tokenizer, max_length, template, console=console)
    return encoded_losses(model, encodings, padding_id(tokenizer), batch_size, prefix_start, reduction)


def _by_domain(records: Sequence[Record], values: Sequence[float]) -> dict[str, list[float]]:
    groups: dict[str, list[float]] = defaultdict(list)
    for record, value in zip(records, values):
        groups[domain_of(record)].append(value)
    return dict(sorted(groups.items()))


def _mean_by_domain(records: Sequence[Record], values: Sequence[float]) -> dict[str, float]:
    return {domain: sum(v) / len(v) for domain, v in _by_domain(records, values).items()}


def per_domain_loss(
    model, tokenizer, records: Sequence[Record], max_length: int = DEFAULT_MAX_LENGTH, batch_size: int = 16,
    template: str = "alpaca", console=None, prefix_start: int | None = None,
) -> dict[str, float]:
    """Mean per-record response loss of each domain: ``{domain: loss}``, domains sorted by name.

    A mean over records (not over tokens), so a long answer counts as much as a short one, as in training.
    """
    losses = record_losses(model, tokenizer, records, max_length, batch_size, template, console, prefix_start)
    return _mean_by_domain(records, losses)


def perplexity(domain_loss: Mapping[str, float]) -> dict[str, float]:
    """``exp(loss)`` per domain (the perplexity of the mean per-record loss)."""
    return {domain: math.exp(loss) for domain, loss in domain_loss.items()}


def macro_mean(per_domain: Mapping[str, float]) -> float | None:
    """Mean over domains (each domain weighs the same, whatever its test-set size); None if empty."""
    values = list(per_domain.values())
    return sum(values) / len(values) if values else None


# --- multiple choice -------------------------------------------------------------------------------

_OPTION_LINE = re.compile(r"^\s*([A-Z])[.)]\s+\S")
_ANSWER_LETTER = re.compile(r"^\s*([A-Z])(?:[.):]|\s|$)")
# Closed answers whose whole output is one word: the candidates are the words of its set.
_WORD_SETS = (("да", "нет"), ("yes", "no", "maybe"), ("yes", "no"))


@dataclass(frozen=True)
class Question:
    """A multiple-choice record: the candidate responses and the index of the right one."""

    record: Record
    options: tuple[str, ...]
    answer: int


def parse_question(record: Record) -> Question | None:
    """Read a record as multiple choice, or return None.

    Lettered: the input holds option lines ``A. text`` or ``A) text`` (the last run of consecutive
    letters from A, at least two) and the output starts with the right letter; the candidates are the
    option lines as written, which is how the shipped data phrases its answers (``"B. 12～48小时"``).
    Questions with several right options (``"D. ...; E. ..."``) are not read: ranking single options
    cannot answer them. Closed: the whole output is one word of a yes/no set (``да``/``нет``;
    ``maybe`` joins yes/no when the prompt mentions it).
    """
    options: list[str] = []
    for line in record.input.splitlines():
        match = _OPTION_LINE.match(line)
        if not match:
            continue
        letter = match.group(1)
        if letter == "A":  # a new block: the last A, B, C... run is the options (a case may start "J. C. ...")
            options = []
        if ord(letter) == ord("A") + len(options):
            options.append(line.strip())
    letters = [chr(ord("A") + i) for i in range(len(options))]
    answer = _ANSWER_LETTER.match(record.output)
    several = re.search(r";\s*[A-Z][.)]\s", record.output)  # "D. ...; E. ...": more than one right option
    if len(options) >= 2 and answer and answer.group(1) in letters and not several:
        return Question(record, tuple(options), letters.index(answer.group(1)))

    word = record.output.strip().rstrip(".").strip()
    prompt = f"{record.instruction}\n{record.input}".lower()
    for words in _WORD_SETS:
        if word.lower() in words and ("maybe" in prompt or "maybe" not in words):
            cased = tuple(w.capitalize() if word[:1].isupper() else w for w in words)
            return Question(record, cased, words.index(word.lower()))
    return None


@dataclass
class MCQResult:
    """Accuracy per domain; ``skipped`` counts records that were not multiple choice."""

    accuracy: dict[str, float] = field(default_factory=dict)
    correct: dict[str, int] = field(default_factory=dict)
    total: dict[str, int] = field(default_factory=dict)
    skipped: int = 0

    @property
    def mean_accuracy(self) -> float | None:
        """Macro mean over domains."""
        return macro_mean(self.accuracy)

    def as_dict(self) -> dict:
        """JSON-ready: the per-domain numbers, their mean and the skipped count."""
        return {
            "accuracy": self.accuracy,
            "mean_accuracy": self.mean_accuracy,
            "correct": self.correct,
            "total": self.total,
            "skipped": self.skipped,
        }


def option_losses(
    model, tokenizer, questions: Sequence[Question], max_length: int = DEFAULT_MAX_LENGTH, batch_size: int = 16,
    template: str = "alpaca", prefix_start: int | None = None,
) -> list[list[float]]:
    """The project loss of every candidate response of every question, all batched together."""
    candidates = [replace(q.record, output=option) for q in questions for option in q.options]
    flat = record_losses(model, tokenizer, candidates, max_length, batch_size, template, prefix_start=prefix_start)
    result, start = [], 0
    for q in questions:
        result.append(flat[start : start + len(q.options)])
        start += len(q.options)
    return result


def mcq_accuracy(
    model, tokenizer, records: Sequence[Record], max_length: int = DEFAULT_MAX_LENGTH, batch_size: int = 16,
    template: str = "alpaca", prefix_start: int | None = None,
) -> MCQResult:
    """Accuracy of picking, for each multiple-choice record, the option with the lowest response loss.

    The score is the project loss of the option as the response (mean log-likelihood over its tokens,
    end-of-sequence included), so options of different lengths compete on the same per-token scale and
    a model is judged by the very loss it was trained on. Ties go to the first option. Records that
    :func:`parse_question` cannot read as multiple choice are skipped and counted.
    """
    questions = [q for q in map(parse_question, records) if q is not None]
    result = MCQResult(skipped=len(records) - len(questions))
    losses = option_losses(model, tokenizer, questions, max_length, batch_size, template, prefix_start)
    hits: dict[str, list[bool]] = defaultdict(list)
    for q, option_loss in zip(questions, losses):
        hits[domain_of(q.record)].append(option_loss.index(min(option_loss)) == q.answer)
    for domain, h in sorted(hits.items()):
        result.correct[domain] = sum(h)
        result.total[domain] = len(h)
        result.accuracy[domain] = sum(h) / len(h)
    return result


# --- the quality probe ------------------------------------------------------------------------------

# Preference of the real answer counts 1, a tie 1/2, a preference of the corrupted answer 0.
TIE = 0.5


def load_probe(path, test: Sequence[Record]) -> list[dict]:
    """``probe.jsonl`` rows ``{"of": test id, "corruption": type, "output": corrupted answer}``, checked
    against the test set (a probe of another benchmark is refused with its line)."""
    ids = {r.id for r in test}
    rows = []
    for number, row in read_rows(path, 'a probe file (one {"of": test id, "corruption": type, "output": text} per line)'):
        for key in ("of", "corruption", "output"):
            if not isinstance(row.get(key), str) or not row[key]:
                raise CluesError(f"{path}:{number}: {key}: a probe row needs non-empty strings 'of', 'corruption', 'output'")
        if row["of"] not in ids:
            raise CluesError(f"{path}:{number}: of: {row['of']!r} is not a record of the test set")
        rows.append(row)
    return rows


def preference_probe(
    model, tokenizer, test_records: Sequence[Record], test_losses: Sequence[float], probe: Sequence[dict],
    max_length: int = DEFAULT_MAX_LENGTH, batch_size: int = 16, template: str = "alpaca", prefix_start: int | None = None,
) -> dict:
    """How often the model prefers a test record's real answer to a corrupted version of it, per corruption type.

    Test loss rewards text of the right domain, and an answer to another question is still that; it
    cannot see what the corruptions damage. Here the prompt is fixed and only the answer changes, so
    the model is asked the question the selection is about: is this the right answer to this
    question? ``{"accuracy": {type: share}, "pairs": {type: n}, "mean": macro mean over types,
    "wins": [1, 0, 0.5, ...]}`` (``wins`` in probe-row order, so two conditions can be compared pair by
    pair); "preferred" means a strictly lower project loss (a tie counts one half), and the real
    answers' losses are ``test_losses`` (the test loss already measured, in ``test_records`` order).
    """
    by_id = {r.id: (r, loss) for r, loss in zip(test_records, test_losses)}
    variants = [replace(by_id[row["of"]][0], output=row["output"]) for row in probe]
    losses = record_losses(model, tokenizer, variants, max_length, batch_size, template, prefix_start=prefix_start)
    outcomes = [1.0 if good < bad else TIE if good == bad else 0.0
                for good, bad in ((by_id[row["of"]][1], bad) for row, bad in zip(probe, losses))]
    wins: dict[str, list[float]] = defaultdict(list)
    for row, outcome in zip(probe, outcomes):
        wins[row["corruption"]].append(outcome)
    accuracy = {kind: sum(w) / len(w) for kind, w in sorted(wins.items())}
    return {"accuracy": accuracy, "pairs": {kind: len(w) for kind, w in sorted(wins.items())},
            "mean": macro_mean(accuracy), "wins": outcomes}


# --- oracle gain ----------------------------------------------------------------------------------

# Below this gap between the mixed and the oracle loss the ratio means nothing (and may divide by zero).
# It only guards the arithmetic: whether the gap is more than noise is asked of the per-record losses.
GAIN_EPS = 1e-6


def gain_recovered(mixed: float, method: float, oracle: float, eps: float = GAIN_EPS) -> float | None:
    """``(mixed - method) / (mixed - oracle)``: 0 is no better than mixed data, 1 matches the oracle.

    None when the oracle is not better than mixed data by more than ``eps * max(1, |mixed|)``, or an
    input is missing or not finite: when clean data does not help, there is no gain to recover, and
    a ratio over a negative denominator would read a worse method as a gain. The sign is kept as is:
    above 1 beats the oracle, below 0 is worse than mixed data.
    """
    values = (mixed, method, oracle)
    if any(v is None or not math.isfinite(v) for v in values):
        return None
    denominator = mixed - oracle
    if denominator <= eps * max(1.0, abs(mixed)):
        return None
    return (mixed - method) / denominator


def oracle_gain_recovered(
    loss_mixed: Mapping[str, float], loss_method: Mapping[str, float], loss_oracle: Mapping[str, float],
    eps: float = GAIN_EPS, records_mixed: Mapping[str, Sequence[float]] | None = None,
    records_oracle: Mapping[str, Sequence[float]] | None = None,
) -> dict:
    """Gain recovered per domain and overall: ``{"per_domain": {domain: float|None}, "mean": float|None}``.

    ``mean`` is the ratio of the macro-mean losses over the domains all three conditions share, not
    the mean of the per-domain ratios: a domain where clean data barely helps has a near-zero
    denominator and would otherwise swing the average arbitrarily.

    With the per-record test losses of mixed and oracle (``record_losses`` of :func:`evaluate_condition`),
    a ratio is given only where the oracle's losses are lower record by record with a 95% interval
    that excludes zero (:mod:`clues.stats`): a gap of noise size would turn any difference into a
    ratio of hundreds of percent.
    """
    def real_gap(domains) -> bool:
        if records_mixed is None or records_oracle is None:
            return True
        if any(d not in records_mixed or d not in records_oracle for d in domains):
            return False
        return clearly_above([x for d in domains for x in records_mixed[d]], [x for d in domains for x in records_oracle[d]])

    domains = [d for d in loss_mixed if d in loss_method and d in loss_oracle]
    per_domain = {d: gain_recovered(loss_mixed[d], loss_method.get(d), loss_oracle.get(d), eps) if real_gap([d]) else None
                  for d in loss_mixed}
    if not domains or not real_gap(domains):
        return {"per_domain": per_domain, "mean": None}
    means = [sum(losses[d] for d in domains) / len(domains) for losses in (loss_mixed, loss_method, loss_oracle)]
    return {"per_domain": per_domain, "mean": gain_recovered(*means, eps=eps)}


# --- one condition, as results.json wants it -------------------------------------------------------


def evaluate_condition(
    model, tokenizer, test_records: Sequence[Record], max_length: int = DEFAULT_MAX_LENGTH, batch_size: int = 16,
    template: str = "alpaca", mcq: bool = True, console=None, prefix_start: int | None = None,
    probe: Sequence[dict] | None = None, answers: bool = False,
) -> dict:
    """One condition's entry of ``results.json``: test loss per domain, its macro mean, perplexity and,
    when the test set holds multiple-choice records and ``mcq`` is on, their accuracy per domain;
    with ``probe`` rows (:func:`load_probe`), the preference probe (:func:`preference_probe`); with
    ``answers``, the model's own answers to the test questions and their checks
    (:func:`clues.answers.quality.answer_quality`).

    ``oracle_gain_recovered`` is left None here: it needs the other conditions (:func:`add_oracle_gain`).
    """
    per_record = record_losses(model, tokenizer, test_records, max_length, batch_size, template, console, prefix_start)
    losses = _mean_by_domain(test_records, per_record)
    entry = {
        "test_loss": losses,
        "record_losses": _by_domain(test_records, per_record),
        "mean_test_loss": macro_mean(losses),
        "perplexity": perplexity(losses),
        "oracle_gain_recovered": None,
    }
    if mcq:
        result = mcq_accuracy(model, tokenizer, test_records, max_length, batch_size, template, prefix_start)
        if result.total:
            entry["mcq_accuracy"] = result.accuracy
            entry["mcq_questions"] = result.total
    if probe:
        entry["preference"] = preference_probe(model, tokenizer, test_records, per_record, probe, max_length,
                                               batch_size, template, prefix_start)
    if answers:
        from clues.answers.quality import answer_quality

        entry["answers"] = answer_quality(model, tokenizer, test_records, max_length, batch_size, template, prefix_start)
    return entry


def add_oracle_gain(conditions: dict, mixed: str = "mixed", oracle: str = "oracle") -> dict:
    """Fill every condition's ``oracle_gain_recovered`` (the overall ``mean`` of
    :func:`oracle_gain_recovered`) when both reference conditions ran; None otherwise. Returns ``conditions``."""
    for entry in conditions.values():
        entry["oracle_gain_recovered"] = None
        if mixed in conditions and oracle in conditions:
            gain = oracle_gain_recovered(conditions[mixed]["test_loss"], entry["test_loss"], conditions[oracle]["test_loss"],
                                         records_mixed=conditions[mixed].get("record_losses"),
                                         records_oracle=conditions[oracle].get("record_losses"))
            entry["oracle_gain_recovered"] = gain["mean"]
    return conditions
