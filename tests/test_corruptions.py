"""The four corruptions: always a change, never empty, only the output touched, reproducible by seed."""

from __future__ import annotations

import random

import pytest

from clues.data import corruptions
from clues.data.corruptions import (
    CorruptionError,
    incomplete_answer,
    mismatched_answer,
    mixed_language,
    random_noise,
    units,
)
from clues.data.records import record_from_dict

ALPHABETS = [
    "abcdefghij klmnop",  # words with spaces
    "aaaa a",  # repeated units: a shuffle alone cannot change these
    "风湿性心肌炎骨质疏松症",  # no spaces at all
    "да нет",
    "AB. 12\n\n",
    " \t\nxyz",
]


def _record(output: str, rid: str = "r", language: str = "en", **extra) -> object:
    return record_from_dict({"id": rid, "instruction": "Answer.", "input": "Q?", "output": output, "language": language, **extra})


def _random_outputs(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    outputs = []
    while len(outputs) < count:
        alphabet = rng.choice(ALPHABETS)
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(2, 80)))
        if len(text.strip()) >= 2:
            outputs.append(text)
    return outputs


def _pool(language: str = "fr") -> list:
    return [_record(f"réponse numéro {i} en français", rid=f"p{i}", language=language) for i in range(5)]


def _apply(name: str, record, seed: int):
    return corruptions.corrupt(name, record, seed, pool=_pool("en"), foreign=_pool("fr"), vocabulary=["alpha", "beta"])


@pytest.mark.parametrize("name", corruptions.NAMES)
def test_every_corruption_changes_the_output_of_random_records(name):
    for i, output in enumerate(_random_outputs(300, seed=corruptions.NAMES.index(name))):
        record = _record(output, source="github:x/y:z@1")
        new = _apply(name, record, seed=i)
        assert new.output != record.output and new.output.strip(), (name, output, new.output)
        # Only the answer changes: the id, the prompt and every other field stay as they were.
        assert (new.id, new.instruction, new.input, new.language) == (record.id, record.instruction, record.input, record.language)
        assert {k: v for k, v in new.raw.items() if k != "output"} == {k: v for k, v in record.raw.items() if k != "output"}
        assert new.raw["output"] == new.output


@pytest.mark.parametrize("name", corruptions.NAMES)
def test_corruptions_are_seeded(name):
    record = _record("The patient should rest, drink fluids and see a doctor if the fever lasts more than three days.")
    assert _apply(name, record, seed=7).output == _apply(name, record, seed=7).output
    assert len({_apply(name, record, seed=s).output for s in range(10)}) > 1


def test_units_round_trip_and_choose_words_or_characters():
    for text in ["one two three four five", "  lead and  trail  words \n", "B. 5 mg", "风湿性心肌炎"]:
        lead, parts, by_words = units(text)
        assert lead + "".join(u + s for u, s in parts) == text
    assert units("one two three four")[2] and not units("B. 5 mg")[2]


def test_incomplete_answer_is_shorter_and_a_part_of_the_answer():
    text = "First take the tablet, then drink a glass of water, then rest for an hour before eating."
    for seed in range(30):
        new = incomplete_answer(_record(text), seed).output
        assert len(new) < len(text) and new.strip()
        words = new.split()
        assert all(w in text.split() for w in words)
    with pytest.raises(CorruptionError):
        incomplete_answer(_record("A"), 0)


def test_incomplete_answer_keeps_the_start_or_deletes_one_span():
    """Either the answer is cut short (its first 20-80% of words, in order) or one span of 20-50% of
    its words is deleted and the rest kept in order; nothing else. A cut that kept the end, or a
    shuffle, fails: only a cut short can leave a start shorter than half the answer."""
    original = "First take the tablet, then drink a glass of water, then rest for an hour before eating.".split()
    n = len(original)
    short_starts = 0
    for seed in range(40):
        words = incomplete_answer(_record(" ".join(original)), seed).output.split()
        k = len(words)
        is_start = words == original[:k] and round(0.2 * n) <= k <= round(0.8 * n)
        spans = [s for s in range(n) if words == original[:s] + original[s + n - k:]]
        is_span = bool(spans) and round(0.2 * n) <= n - k <= round(0.5 * n)
        assert is_start or is_span, (seed, words)
        short_starts += is_start and k < n / 2
    assert short_starts >= 3


def test_mismatched_answer_takes_a_different_answer_of_the_pool():
    pool = [_record("yes", rid="a"), _record("yes", rid="b"), _record("no", rid="c")]
    for seed in range(10):
        assert mismatched_answer(_record("yes"), pool, seed).output == "no"
    with pytest.raises(CorruptionError):
        mismatched_answer(_record("yes"), pool[:2], 0)


def test_mixed_language_borrows_an_answer_in_another_language():
    pool = [_record("same language answer", rid="e", language="en")] + _pool("fr")
    donors = {r.output for r in pool if r.language == "fr"}
    for seed in range(10):
        assert mixed_language(_record("an English answer", language="en"), pool, seed).output in donors
    with pytest.raises(CorruptionError):
        mixed_language(_record("an English answer", language="en"), pool[:1], 0)


def test_random_noise_keeps_the_whitespace_layout_of_word_answers():
    text = "Rest,\n\ndrink fluids  and see a doctor if the fever lasts."
    for seed in range(20):
        new = random_noise(_record(text), seed, vocabulary=["alpha", "beta"]).output
        assert new.count("\n") == text.count("\n") and len(new.split()) == len(text.split())


def test_unknown_corruption_is_a_clear_error():
    with pytest.raises(Exception, match="unknown corruption"):
        corruptions.corrupt("nope", _record("text here"), 0)
