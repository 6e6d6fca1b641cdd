"""Near-duplicates of public records inside a silo: planted copies with case, spacing, punctuation and
one word changed are found, counted apart from exact copies, and only counts leave the silo."""

from __future__ import annotations

import itertools
import random

from clues import protocol
from clues.data import record_from_dict
from clues.data.near_duplicates import MIN_WORDS, NearIndex, near_flags, variants, words
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


def test_near_flags_mark_each_record_within_one_word_of_a_public_one():
    public = [_rec(QUESTION, ANSWER)]
    records = [_rec(QUESTION, ANSWER), _rec(QUESTION.replace("usual", "standard"), ANSWER), _rec("Define APR.", ANSWER)]
    assert near_flags(records, public) == [True, True, False]


def test_drop_overlap_leaves_planted_copies_out_of_training_and_a_rerun_without_it_takes_them_back(
        tmp_path, tiny_model_dir, clues_here):
    """Three public records planted in a silo (a test record as is, a validation record in capitals, an
    anchor record with one word changed): `clues run --drop-overlap` trains that silo on the rest and
    says how many it left out; the ids stay in the silo's work folder. The same run without the flag,
    into the same folder, trains on every record again."""
    import json

    from conftest import small_consortium

    from clues.io import read_jsonl, write_jsonl

    silos, public, labels = small_consortium(tmp_path / "data", 6, {"validation": 2, "anchor": 2, "test": 2})
    test, validation, anchor = (read_jsonl(public[name])[0] for name in ("test", "validation", "anchor"))
    planted = [{**test, "id": "planted-1"},
               {**validation, "id": "planted-2", "instruction": validation["instruction"].upper()},
               {**anchor, "id": "planted-3", "output": anchor["output"] + " Indeed."}]
    bank = read_jsonl(silos["bank"]) + planted
    write_jsonl(silos["bank"], bank)
    write_jsonl(labels, read_jsonl(labels) + [{"id": r["id"], "clean": True} for r in planted])
    config = tmp_path / "run.toml"
    config.write_text("\n".join([
        f'model = "{tiny_model_dir}"', f'validation = "{public["validation"]}"', f'anchor = "{public["anchor"]}"',
        f'test = "{public["test"]}"', f'labels = "{labels}"', 'conditions = ["mixed"]', "answers = false", "[silos]",
        *(f'{name} = "{path}"' for name, path in silos.items()),
        "[train]", "epochs = 1", "batch_size = 6", "max_length = 48", ""]))
    out = tmp_path / "out"
    code, text = clues_here("run", "--config", config, "--out", out, "--drop-overlap")
    assert code == 0, text
    assert "silo 'bank' left out 3 records that copy public records" in text and "silo 'clinic' left out" not in text
    results = json.loads((out / "results.json").read_text())
    assert results["training"]["mixed"]["bank"]["records"] == len(bank) - 3
    assert results["training"]["mixed"]["clinic"]["records"] == 6
    kept_out = json.loads((out / "silos" / "bank" / "dropped-overlap.json").read_text())["ids"]
    assert kept_out == ["planted-1", "planted-2", "planted-3"]
    wire = (out / "boundary_log.jsonl").read_text() + json.dumps(results)
    assert "planted-" not in wire
    code, text = clues_here("run", "--config", config, "--out", out)
    assert code == 0, text
    assert json.loads((out / "results.json").read_text())["training"]["mixed"]["bank"]["records"] == len(bank)
    assert not (out / "silos" / "bank" / "dropped-overlap.json").exists()
