"""Near-duplicates of public records inside a silo: planted copies with case, spacing, punctuation and
one word changed are found, counted apart from exact copies, and only counts leave the silo."""

from __future__ import annotations

import itertools
import random

from clues import protocol
from clues.data import record_from_dict
from clues.data.near_duplicates import MIN_WORDS, NearIndex, near_count, variants, words
from clues.data.records import record_to_json

QUESTION = "What is the usual first treatment for a patient with newly diagnosed high blood pressure?"
ANSWER = "Lifestyle changes first: less salt, more exercise, less alcohol; then a thiazide or an ACE inhibitor."


def _rec(instruction, output, input="", id=None):
    row = {"instruction": instruction, "input": input, "output": output}
    return record_from_dict({**row, **({"id": id} if id else {})})


def _within_one_word(a: list[str], b: list[str]) -> bool:
    """The slow, obvious reference: equal after deleting at most one word from each."""
    drops = lambda s: [s] + [s[:i] + s[i + 1:] for i in range(len(s))]  # noqa: E731
    return any(x == y for x in drops(a) for y in drops(b))


def test_one_word_apart_by_hash_equals_the_reference_on_random_sequences():
    rng = random.Random(3)
    vocab = ["a", "b", "c", "d"]
    for _ in range(400):
        a = [rng.choice(vocab) for _ in range(rng.randint(0, 7))]
        b = list(a)
        for _ in range(rng.randint(0, 2)):  # 0-2 random edits: substitute, insert or delete a word
            edit = rng.choice(["sub", "ins", "del"])
            i = rng.randint(0, len(b))
            if edit == "ins":
                b.insert(i, rng.choice(vocab))
            elif b and i < len(b):
                b[i:i + 1] = [rng.choice(vocab)] if edit == "sub" else []
        assert (not variants(a).isdisjoint(variants(b))) == _within_one_word(a, b), (a, b)


def test_planted_duplicates_are_found_and_counted_apart_from_exact_copies(tmp_path):
    from clues.silo import Silo

    public = [_rec(QUESTION, ANSWER, id="pub-1"),
              _rec("请解释高血压的首选治疗方法是什么以及为什么要先改变生活方式", "先改变生活方式，再用药物治疗。", id="pub-2")]
    planted = {
        "exact": _rec(QUESTION, ANSWER, id="s1"),
        "same id": _rec("Something else entirely, about bonds and yields.", "Yields fall when prices rise.", id="pub-1"),
        "case and spacing": _rec("  what IS the usual first treatment for a patient with newly-diagnosed high blood pressure ", ANSWER.upper(), id="s2"),
        "one word replaced": _rec(QUESTION.replace("usual", "standard"), ANSWER, id="s3"),
        "one word added": _rec(QUESTION.replace("first", "very first"), ANSWER, id="s4"),
        "one character (zh)": _rec("请解释高血压的首选治疗方法是什么以及为什么要先改变生活形式", "先改变生活方式，再用药物治疗。", id="s5"),
    }
    unrelated = {
        "two words replaced": _rec(QUESTION.replace("usual", "standard").replace("patient", "child"), ANSWER, id="s6"),
        "another question": _rec("How do bonds react to rising interest rates?", "Their prices fall.", id="s7"),
        "short, one word apart": _rec("Capital of Italy?", "Rome.", id="s8"),
    }
    short_public = _rec("Capital of France?", "Rome.", id="pub-3")
    assert len(words(short_public)) < MIN_WORDS
    index = NearIndex(public + [short_public])
    for name, record in planted.items():
        if name not in ("exact", "same id"):
            assert index.matches(record), name
    for name, record in unrelated.items():
        assert not index.matches(record), name

    silo = Silo("clinic", list(planted.values()) + list(unrelated.values()), tmp_path / "clinic")
    request = protocol.Message(protocol.HELLO, {"public": {"test": [record_to_json(r) for r in public + [short_public]],
                                                           "anchor": [], "validation": []}})
    reply = protocol.Message.from_bytes(silo.handle(request).to_bytes())  # as it crosses
    assert reply.meta["public_overlap"] == {"test": 2, "anchor": 0, "validation": 0}
    assert reply.meta["public_near"] == {"test": 4, "anchor": 0, "validation": 0}
    crossed = reply.to_bytes()
    for record in itertools.chain(planted.values(), unrelated.values()):
        assert record.id.encode() not in crossed  # counts only


def test_near_count_leaves_out_the_exact_copies_it_is_told_of():
    public = [_rec(QUESTION, ANSWER)]
    records = [_rec(QUESTION, ANSWER), _rec(QUESTION.replace("usual", "standard"), ANSWER)]
    assert near_count(records, public) == 2
    assert near_count(records, public, exact=[True, False]) == 1
