"""The answer checks and the greedy answers they read (clues.answers).

Every expected value is written out by hand or computed by a slow, obvious reference: a greedy loop
that runs the whole sequence through the model for every new token, one record at a time, without a
cache or padding.
"""

from __future__ import annotations

import copy
import sys

import pytest
import torch

from clues.answers import checks
from clues.answers.checks import (
    Reference,
    check_answer,
    ends_properly,
    in_other_language,
    named_option,
    rouge_l,
)
from clues.answers.generate import generate_answers, prompt_ids, token_budgets
from clues.answers.quality import fluency_limits, rates, references
from clues.data import record_from_dict
from clues.errors import CluesError

SPANISH = ("El paciente presenta fiebre alta y dolor abdominal desde hace tres días, por lo que se "
           "recomienda realizar una ecografía y un análisis de sangre completo.")
OPTIONS = ("A. Autosomal dominant", "B. Increase in circulating fetal hemoglobin", "C. Gastritis")


def _rec(output, domain="medical", language="en", input_="What causes fever?", **extra):
    return record_from_dict({"instruction": "Answer truthfully", "input": input_, "output": output,
                             "domain": domain, "language": language, **extra})


# --- language ---------------------------------------------------------------------------------------

def test_language_flags_a_fluent_answer_in_another_language_only():
    assert in_other_language(SPANISH, "en") is True
    assert in_other_language("The patient has a high fever and should see a doctor today.", "en") is False
    # A bare term or an option letter is too short to be anything; it is not flagged.
    assert in_other_language("A. Dantrolene", "en") is False
    assert in_other_language("B. 腺病毒", "zh") is False
    assert in_other_language("", "en") is False


def test_a_language_the_identifier_does_not_know_is_not_measured():
    row = check_answer("Some answer.", Reference("Some answer.", "xx"))
    assert row["language"] is None and row["passes"]["language"] is None
    assert row["passed"] is True  # unmeasured checks are left out, not counted as failures


# --- complete ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, options, sentence_end, expected", [
    ("Fever is caused by infection.", (), True, True),
    ("Fever is caused by", (), True, False),
    ("她发烧了。", (), True, True),
    ("“It ends here.”", (), True, True),
    ("Fever Chills Headache", (), False, True),  # a domain of lists: any text ends
    ("", (), False, False),
    ("B. Increase in circulating fetal hemoglobin", OPTIONS, True, True),
    ("B. Increase in circ", OPTIONS, True, False),
    ("B", OPTIONS, True, True),
    ("A. Autosomal dominant\nB. Increase in circulating fetal hemoglobin", OPTIONS, True, False),
])
def test_ends_properly(text, options, sentence_end, expected):
    assert ends_properly(text, options, sentence_end) is expected


def test_named_option():
    assert named_option("C. Gastritis", OPTIONS) == 2
    assert named_option("C. Gastritis.", OPTIONS) == 2
    assert named_option("C", OPTIONS) == 2
    assert named_option("D. Gastritis", OPTIONS) is None  # no option D
    assert named_option("C. Autosomal dominant", OPTIONS) is None  # letter and text disagree
    assert named_option("Gastritis", OPTIONS) is None
    assert named_option("B. hemoglobin", OPTIONS) is None  # a piece of option B is not option B


# --- clean words and relevance -----------------------------------------------------------------------

def test_rouge_l_against_hand_computed_values():
    # LCS("a c d e", "a b c d") = "a c d": precision 3/4, recall 3/4.
    assert rouge_l("a c d e", "a b c d") == pytest.approx(0.75)
    # Every CJK character is a token: LCS("我你", "我爱你") = 2, precision 1, recall 2/3, F1 = 0.8.
    assert rouge_l("我你", "我爱你") == pytest.approx(0.8)
    assert rouge_l("", "a b") == 0.0


def test_passed_means_every_measured_check_passed():
    reference = Reference("Fever is caused by infection.", "en")
    good = check_answer("Fever is usually caused by an infection.", reference, stopped=True, fluent=True)
    assert good["passed"] is True
    assert check_answer("Fever is usually caused by an infection.", reference, stopped=False, fluent=True)["passed"] is False
    assert check_answer("Fever is usually caused by an infection.", reference, fluent=False)["passed"] is False
    assert check_answer(SPANISH, reference, fluent=True)["passes"]["language"] is False
    mcq = Reference("B. Increase in circulating fetal hemoglobin", "en", OPTIONS, 1)
    wrong = check_answer("C. Gastritis", mcq, fluent=True)
    assert wrong["exact_match"] is False and wrong["passes"]["relevant"] is True  # an option of this question
    assert check_answer("Take two aspirins.", mcq, fluent=True)["passes"]["relevant"] is False


def test_a_missing_metric_package_is_a_one_line_error(monkeypatch):
    checks._identifier.cache_clear()
    monkeypatch.setitem(sys.modules, "py3langid.langid", None)
    with pytest.raises(CluesError, match="pip install py3langid"):
        in_other_language("a word", "en")
    checks._identifier.cache_clear()


# --- references, budgets, rates -------------------------------------------------------------------------

def test_references_ask_for_sentence_ends_only_where_the_domain_has_them():
    test = [_rec("Ends here."), _rec("Ends too."), _rec("no end"),
            _rec("Cough Fever", domain="lists"), _rec("Rash", domain="lists"), _rec("It itches.", domain="lists")]
    found = references(test)
    assert [r.sentence_end for r in found] == [True, True, True, False, False, False]  # 2/3 and 1/3 end


def test_token_budgets_follow_the_references(tiny_tokenizer):
    test = [_rec("word " * n, domain=d) for d, n in (("a", 2), ("a", 4), ("a", 30), ("b", 1))]
    lengths = {d: sorted(len(tiny_tokenizer(r.output, add_special_tokens=False)["input_ids"]) + 1
                         for r in test if r.domain == d) for d in "ab"}
    budgets = token_budgets(test, tiny_tokenizer, cap=1000)
    # 0.9 quantile of 3 values is the largest; times 1.25, rounded up; at least 8.
    assert budgets == {"a": max(8, -(-5 * lengths["a"][2] // 4)), "b": 8}
    assert token_budgets(test, tiny_tokenizer, cap=10)["a"] == 10


def test_rates_and_fluency_limits_by_hand():
    test = [_rec("x", domain="a"), _rec("x", domain="a"), _rec("x", domain="b")]
    rows = [{"passed": True, "passes": {"language": True, "fluent": None}},
            {"passed": False, "passes": {"language": False, "fluent": True}},
            {"passed": True, "passes": {"language": True, "fluent": True}}]
    found = rates(test, rows)
    assert found["passed"]["per_domain"] == {"a": 0.5, "b": 1.0} and found["passed"]["mean"] == 0.75
    assert found["language"]["mean"] == 0.75
    assert found["fluent"]["per_domain"] == {"a": 1.0, "b": 1.0}  # the unmeasured answer is left out
    losses = [float(i) for i in range(10)] + [5.0]
    limits = fluency_limits(losses, [_rec("x", domain="a")] * 10 + [_rec("x", domain="b")])
    assert limits == {"a": 8.0, "b": 5.0}  # the 9th of 10 sorted values


# --- greedy answers ---------------------------------------------------------------------------------------

def _greedy_reference(model, tokenizer, record, budget, max_length):
    """One record, no cache, no padding: the whole sequence through the model for every new token."""
    ids = prompt_ids(record, tokenizer, max_length - budget)
    new = []
    with torch.no_grad():
        for _ in range(budget):
            token = int(model(input_ids=torch.tensor([ids + new])).logits[0, -1].argmax())
            if token == tokenizer.eos_token_id:
                return tokenizer.decode(new, skip_special_tokens=True), True, new
            new.append(token)
    return tokenizer.decode(new, skip_special_tokens=True), False, new


def test_batched_answers_equal_the_one_by_one_reference():
    from clues.model import load_model

    # The shipped default model: a real (tiny) language model, so every prompt gets its own answer.
    model, tiny_tokenizer = load_model("default")
    model = model.double()  # float64: no near-tie can flip an argmax between padded and unpadded
    # (transformers' eager attention mishandles left padding in float64; SDPA does not)
    model.config._attn_implementation = "sdpa"
    records = [_rec("a short answer", domain="a", input_="What is a fever?"),
               _rec("an answer", domain="b", input_="Which organ makes insulin, and why does it matter?"),
               _rec("x", domain="a", input_="Name one symptom."),
               _rec("y", domain="b", input_="Is the stock market risky for a retired teacher with savings?")]
    budgets = {"a": 6, "b": 12}
    # Make a token that the reference writes for record 1, and never for record 0, the end-of-sequence
    # token: record 1 then stops by itself, record 0 runs into its budget.
    written = [_greedy_reference(model, tiny_tokenizer, r, budgets[r.domain], 96)[2] for r in records[:2]]
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(next(t for t in written[1] if t not in written[0]))
    expected = [(text, stopped, len(ids)) for text, stopped, ids in
                (_greedy_reference(model, tokenizer, r, budgets[r.domain], 96) for r in records)]
    assert any(stopped for _, stopped, _ in expected) and not all(stopped for _, stopped, _ in expected)
    for batch_size in (1, 3, 4):
        answers = generate_answers(model, tokenizer, records, budgets, 96, batch_size=batch_size)
        assert [(a.text, a.stopped, a.tokens) for a in answers] == expected


# --- the verdict and the report read the answers -----------------------------------------------------------

def _condition(passed: list[int], language: list[int] | None = None) -> dict:
    language = language or [1] * len(passed)
    rows = [{"id": f"t{i}", "domain": "d", "question": f"question {i}", "answer": f"answer {i} {p}",
             "passed": bool(p), "passes": {"language": bool(lang), "complete": bool(p)}}
            for i, (p, lang) in enumerate(zip(passed, language))]
    return {"test_loss": {"d": 1.0}, "answers": {"passed": [float(p) for p in passed], "rows": rows,
                                                  "rates": rates([_rec("x", domain="d")] * len(rows), rows)}}


def test_verdict_on_answers_pairs_them_and_asks_for_a_real_gap():
    from clues.verdict import verdict

    n = 40
    mixed = [0] * n
    oracle = [1] * 20 + [0] * 20            # +50 points, far beyond noise
    clues = [1] * 10 + [0] * 30             # +25 points: half of the oracle's gain
    noise = [1] + [0] * (n - 1)             # +2.5 points: one answer, within noise
    results = {"conditions": {"mixed": _condition(mixed), "clues": _condition(clues, language=[0] * 5 + [1] * 35),
                              "random": _condition(noise), "oracle": _condition(oracle)}}
    lines = [line for line in verdict(results) if "(quality probe)" not in line]
    by_name = {line.split("**")[1]: line for line in lines}
    assert by_name["oracle"].startswith("**oracle**: better than")
    assert "50.0% of 40 test questions, against 0.0% (+50.0 points" in by_name["oracle"]
    # paired differences d = 1 for 10 of 40 answers: mean 0.25, sd = sqrt(10 * 0.75^2 + 30 * 0.25^2) / sqrt(39)
    half = 1.96 * ((10 * 0.75 ** 2 + 30 * 0.25 ** 2) / 39) ** 0.5 / 40 ** 0.5
    assert f"95% interval {100 * (0.25 - half):+.1f} to {100 * (0.25 + half):+.1f}" in by_name["clues"]
    assert "It recovers 50% of the oracle's gain." in by_name["clues"]
    assert "complete +25.0" in by_name["clues"] and "language -12.5" in by_name["clues"]
    assert by_name["random"].startswith("**random**: no different, within noise")


def test_report_shows_answer_rates_and_answers_side_by_side(tmp_path):
    from clues.report import answer_gain_table, answers_table, examples_table, write_report

    results = {"conditions": {"mixed": _condition([0, 1, 0]), "oracle": _condition([1, 1, 0])}}
    results["conditions"]["oracle"]["answers"]["rows"][0]["answer"] = "a better answer"
    table = answers_table(results)
    assert [row[0] for row in table.rows] == ["mixed", "oracle"]
    assert table.rows[0][table.headers.index("all checks")] == "33.3%"
    assert table.rows[1][table.headers.index("all checks")] == "66.7%"
    gain = answer_gain_table(results)
    # oracle - mixed, answer by answer: differences (1, 0, 0), mean 1/3, sd = sqrt(1/3), half-width 1.96 sd / sqrt(3)
    half = 1.96 * (1 / 3) ** 0.5 / 3 ** 0.5
    assert gain.rows == [["oracle"] + [f"+33.3 ({100 * (1 / 3 - half):+.1f} to {100 * (1 / 3 + half):+.1f})"] * 2]
    examples = examples_table(results)
    # the question where the oracle's answer differs from mixed's comes first
    assert examples.rows[0][:4] == ["d", "question 0", "✗ answer 0 0", "✓ a better answer"]
    html = write_report(results, tmp_path)["html"].read_text(encoding="utf-8")
    assert html.index("Verdict") < html.index("Answer quality") < html.index("Answers side by side")
