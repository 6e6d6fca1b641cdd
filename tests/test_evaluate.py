import math

import pytest
import torch

from clues.data import encode, record_from_dict
from clues.evaluate import (
    gain_recovered,
    mcq_accuracy,
    option_losses,
    oracle_gain_recovered,
    parse_question,
    per_domain_loss,
    perplexity,
    record_losses,
)

MAX_LEN = 96


def _rec(instruction, input_, output, domain=None, **extra):
    obj = {"instruction": instruction, "input": input_, "output": output, **extra}
    if domain:
        obj["domain"] = domain
    return record_from_dict(obj)


def _records():
    return [
        _rec("Define APR.", "", "Annual percentage rate.", "finance"),
        _rec("What is a stock?", "", "A share of ownership in a company, traded on an exchange.", "finance"),
        _rec("Name a symptom of flu.", "", "Fever.", "medical"),
        _rec("Explain hypertension.", "Adult patient", "High blood pressure, over 140/90 mm Hg at rest.", "medical"),
        _rec("Translate", "bonjour", "hello there, my friend"),  # no domain
    ]


def _hand_loss(model, tok, record):
    """The response loss written out by hand: forward one unpadded record, mean NLL of its response tokens."""
    enc = encode(record, tok, MAX_LEN)
    ids = torch.tensor([enc["input_ids"]])
    labels = enc["labels"]
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
    nll = [-logprobs[t - 1, labels[t]].item() for t in range(1, len(labels)) if labels[t] != -100]
    return sum(nll) / len(nll)


def test_per_domain_loss_equals_hand_loop(tiny_llama):
    model, tok = tiny_llama
    records = _records()
    got = per_domain_loss(model, tok, records, max_length=MAX_LEN, batch_size=3)
    groups = {}
    for r in records:
        groups.setdefault(r.domain or "all", []).append(_hand_loss(model, tok, r))
    expected = {d: sum(v) / len(v) for d, v in groups.items()}
    assert list(got) == sorted(expected)
    for d in expected:
        assert got[d] == pytest.approx(expected[d], rel=1e-5)
    assert perplexity(got)["medical"] == pytest.approx(math.exp(got["medical"]))


def test_batched_losses_equal_batch_size_one(tiny_llama):
    model, tok = tiny_llama
    records = _records()
    single = record_losses(model, tok, records, MAX_LEN, batch_size=1)
    batched = record_losses(model, tok, records, MAX_LEN, batch_size=4)
    assert batched == pytest.approx(single, rel=1e-5, abs=1e-6)


def test_evaluation_restores_training_mode_and_keeps_no_graph(tiny_llama):
    model, tok = tiny_llama
    model.train()
    losses = record_losses(model, tok, _records()[:2], MAX_LEN)
    assert model.training
    assert all(isinstance(x, float) for x in losses)
    assert all(p.grad is None for p in model.parameters())


# --- multiple choice ------------------------------------------------------------------------------

MCQ_INSTRUCTION = "Answer the following medical multiple-choice question. Reply with the letter and text of the correct option(s)."


def _mcq_records():
    return [
        _rec(MCQ_INSTRUCTION, "Which organ pumps blood?\n\nA. Liver\nB. Heart\nC. Kidney\nD. Lung", "B. Heart", "medical-mcq"),
        _rec(MCQ_INSTRUCTION, "J. C. de 85 años. ¿Qué hueso?\n\nA. Fémur\nB. Radio\nC. Cúbito", "A. Fémur", "medical-es"),
        _rec(MCQ_INSTRUCTION, "Pick a vitamin.\n\nA. Iron\nB. Zinc\nC. Vitamin C\nD. Calcium\nE. Salt", "C. Vitamin C", "medical-mcq"),
        _rec("Read the medical context and answer the question with 'да' (yes) or 'нет' (no).",
             "Сердце качает кровь.\n\nВопрос: Верно ли это?", "да", "medical-ru"),
        _rec("Answer yes or no.", "Is the heart a muscle?", "Yes", "medical-mcq"),
        _rec(MCQ_INSTRUCTION, "Pick two.\n\nA. x\nB. y\nC. z", "A. x; C. z", "medical-mcq"),  # several answers: skipped
        _rec("Explain hypertension.", "", "High blood pressure.", "medical"),  # not a question: skipped
    ]


def test_parse_question_reads_letters_words_and_skips_the_rest():
    records = _mcq_records()
    heart = parse_question(records[0])
    assert heart.options == ("A. Liver", "B. Heart", "C. Kidney", "D. Lung") and heart.answer == 1
    spanish = parse_question(records[1])  # "J. C." in the case text is not an option
    assert spanish.options == ("A. Fémur", "B. Radio", "C. Cúbito") and spanish.answer == 0
    assert parse_question(records[3]).options == ("да", "нет")
    yes = parse_question(records[4])
    assert yes.options == ("Yes", "No") and yes.answer == 0
    maybe = parse_question(_rec("Answer yes, no or maybe.", "Q?", "maybe"))
    assert maybe.options == ("yes", "no", "maybe") and maybe.answer == 2
    assert parse_question(records[5]) is None
    assert parse_question(records[6]) is None
    assert parse_question(_rec("Summarise.", "A. first point\nB. second point", "Both points matter.")) is None


def test_parse_question_reads_the_shipped_single_answer_questions():
    from clues.data import shipped

    records = [r for r in shipped.load("mmed_mcq", "all") if r.language in ("en", "zh", "ru", "es")]
    questions = [parse_question(r) for r in records]
    assert all(q is not None for q in questions)
    # the right candidate is the answer as the data writes it (a few English outputs end in a stray '\n"')
    assert all(q.record.output.startswith(q.options[q.answer]) for q in questions)


def test_mcq_accuracy_equals_brute_force(tiny_llama):
    model, tok = tiny_llama
    records = _mcq_records()
    result = mcq_accuracy(model, tok, records, max_length=MAX_LEN, batch_size=4)
    assert result.skipped == 2
    correct, total = {}, {}
    for record in records:
        q = parse_question(record)
        if q is None:
            continue
        from dataclasses import replace

        losses = [_hand_loss(model, tok, replace(record, output=o)) for o in q.options]
        domain = record.domain
        correct[domain] = correct.get(domain, 0) + (losses.index(min(losses)) == q.answer)
        total[domain] = total.get(domain, 0) + 1
    assert result.total == total
    assert result.correct == correct
    assert result.accuracy == {d: correct[d] / total[d] for d in total}
    assert result.as_dict()["mean_accuracy"] == pytest.approx(sum(result.accuracy.values()) / len(total))


def test_option_losses_batched_equal_batch_size_one(tiny_llama):
    model, tok = tiny_llama
    questions = [q for q in map(parse_question, _mcq_records()) if q]
    single = option_losses(model, tok, questions, MAX_LEN, batch_size=1)
    batched = option_losses(model, tok, questions, MAX_LEN, batch_size=16)
    for a, b in zip(batched, single):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-6)


# --- oracle gain ----------------------------------------------------------------------------------


def test_gain_recovered_formula_and_edge_cases():
    assert gain_recovered(2.0, 1.5, 1.0) == pytest.approx(0.5)
    assert gain_recovered(2.0, 1.0, 1.0) == pytest.approx(1.0)
    assert gain_recovered(2.0, 2.0, 1.0) == 0.0
    assert gain_recovered(2.0, 0.5, 1.0) == pytest.approx(1.5)  # beats the oracle
    assert gain_recovered(2.0, 2.5, 1.0) == pytest.approx(-0.5)  # worse than mixed
    assert gain_recovered(2.0, 1.5, 2.0) is None  # clean data did not help: nothing to recover
    assert gain_recovered(2.0, 1.5, 2.0 - 1e-9) is None
    assert gain_recovered(2.0, 2.5, 2.2) is None  # oracle worse than mixed: a 'gain' would flip sign
    assert gain_recovered(float("nan"), 1.5, 1.0) is None
    assert gain_recovered(2.0, None, 1.0) is None


def test_oracle_gain_per_domain_and_mean_of_losses():
    mixed = {"a": 2.0, "b": 3.0, "c": 1.0}
    method = {"a": 1.5, "b": 2.0, "c": 1.2}
    oracle = {"a": 1.0, "b": 2.0, "c": 1.0}
    gain = oracle_gain_recovered(mixed, method, oracle)
    assert gain["per_domain"] == {"a": pytest.approx(0.5), "b": pytest.approx(1.0), "c": None}
    # mean: ratio of the macro-mean losses (2.0 - 1.5667) / (2.0 - 1.3333)
    assert gain["mean"] == pytest.approx((2.0 - 4.7 / 3) / (2.0 - 4.0 / 3))
    missing = oracle_gain_recovered({"a": 2.0, "b": 3.0}, {"a": 1.5}, {"a": 1.0, "b": 2.0})
    assert missing["per_domain"]["b"] is None and missing["mean"] == pytest.approx(0.5)
    assert oracle_gain_recovered({"a": 2.0}, {"a": 1.0}, {"a": 2.0})["mean"] is None


def test_evaluate_condition_and_add_oracle_gain(tiny_llama):
    from clues.evaluate import add_oracle_gain, evaluate_condition

    model, tok = tiny_llama
    records = _records()[:3] + _mcq_records()[:2]
    entry = evaluate_condition(model, tok, records, max_length=MAX_LEN)
    assert set(entry["test_loss"]) == {"finance", "medical", "medical-mcq", "medical-es"}
    assert entry["mean_test_loss"] == pytest.approx(sum(entry["test_loss"].values()) / 4)
    assert entry["mcq_questions"] == {"medical-es": 1, "medical-mcq": 1}
    conditions = {
        "mixed": {"test_loss": {"a": 2.0, "b": 3.0}},
        "clues": {"test_loss": {"a": 1.5, "b": 2.5}},
        "oracle": {"test_loss": {"a": 1.0, "b": 2.0}},
    }
    add_oracle_gain(conditions)
    assert [c["oracle_gain_recovered"] for c in conditions.values()] == [0.0, pytest.approx(0.5), 1.0]
    assert add_oracle_gain({"clues": {"test_loss": {"a": 1.0}}})["clues"]["oracle_gain_recovered"] is None
    assert {d: len(v) for d, v in entry["record_losses"].items()} == {"finance": 2, "medical": 1, "medical-mcq": 1,
                                                                       "medical-es": 1}
    assert entry["test_loss"]["finance"] == pytest.approx(sum(entry["record_losses"]["finance"]) / 2)


def test_oracle_gain_needs_a_gap_larger_than_noise():
    """A noise-sized oracle advantage gave ratios of hundreds of percent; with per-record losses it gives none."""
    from clues.evaluate import add_oracle_gain

    noisy_mixed = {"a": [2.0, 1.0, 3.0, 2.0]}  # mean 2.0
    noisy_oracle = {"a": [1.0, 2.0, 2.0, 2.99]}  # mean 1.9975: lower, but well within the spread
    mixed, method, oracle = {"a": 2.0}, {"a": 1.99}, {"a": 1.9975}
    assert oracle_gain_recovered(mixed, method, oracle)["mean"] == pytest.approx(4.0)  # the old reading: 400%
    gated = oracle_gain_recovered(mixed, method, oracle, records_mixed=noisy_mixed, records_oracle=noisy_oracle)
    assert gated == {"per_domain": {"a": None}, "mean": None}
    clear_oracle = {"a": [1.5, 0.5, 2.5, 1.5]}  # every record 0.5 lower
    gain = oracle_gain_recovered(mixed, {"a": 1.75}, {"a": 1.5}, records_mixed=noisy_mixed, records_oracle=clear_oracle)
    assert gain == {"per_domain": {"a": pytest.approx(0.5)}, "mean": pytest.approx(0.5)}
    conditions = {"mixed": {"test_loss": mixed, "record_losses": noisy_mixed}, "clues": {"test_loss": method},
                  "oracle": {"test_loss": oracle, "record_losses": noisy_oracle}}
    assert add_oracle_gain(conditions)["clues"]["oracle_gain_recovered"] is None
