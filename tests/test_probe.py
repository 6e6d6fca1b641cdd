"""The quality probe: corrupted twins of test answers at build time, preference per corruption type."""

import json
from dataclasses import replace

import pytest

from clues.data import record_from_dict
from clues.data.build import make_benchmark
from clues.data.corruptions import NAMES
from clues.errors import CluesError
from clues.evaluate import evaluate_condition, load_probe, preference_probe, record_losses
from clues.stats import paired_difference
from clues.verdict import judge, verdict

MAX_LEN = 96


def test_benchmark_probe_has_every_type_for_the_probed_test_records():
    bench = make_benchmark("mixed-small", seed=1)
    rows = bench.files["probe.jsonl"]
    test = {r["id"]: r for r in bench.files["test.jsonl"]}
    assert {r["corruption"] for r in rows} == set(NAMES)
    probed = {r["of"] for r in rows}
    assert probed <= set(test) and len(probed) == 4 * 16  # 16 probed test records per domain
    for row in rows:
        assert row["output"] != test[row["of"]]["output"] and row["output"].strip()
    # public data only: no silo answer is planted in the probe
    silo_outputs = {r["output"] for f, rs in bench.files.items() if f.startswith("silos/") for r in rs}
    mismatched = [r["output"] for r in rows if r["corruption"] == "mismatched_answer"]
    assert not set(mismatched) & (silo_outputs - {t["output"] for t in test.values()})
    assert make_benchmark("mixed-small", seed=1).files["probe.jsonl"] == rows  # deterministic


def _records():
    return [record_from_dict({"instruction": "Define APR.", "input": "", "output": "Annual percentage rate.", "domain": "finance"}),
            record_from_dict({"instruction": "Name a symptom of flu.", "input": "", "output": "Fever and chills.", "domain": "medical"})]


def test_preference_probe_counts_lower_losses_of_the_real_answer(tiny_llama):
    model, tok = tiny_llama
    records = _records()
    probe = [{"of": records[0].id, "corruption": "incomplete_answer", "output": "Annual"},
             {"of": records[1].id, "corruption": "mismatched_answer", "output": "Annual percentage rate."},
             {"of": records[1].id, "corruption": "incomplete_answer", "output": records[1].output}]  # a tie
    good = record_losses(model, tok, records, MAX_LEN)
    bad = record_losses(model, tok, [replace(r, output=p["output"]) for r, p in zip([records[0], records[1], records[1]], probe)], MAX_LEN)
    expected = [1.0 if g < b else 0.0 for g, b in ((good[0], bad[0]), (good[1], bad[1]))] + [0.5]
    got = preference_probe(model, tok, records, good, probe, MAX_LEN, batch_size=2)
    assert got["wins"] == expected
    assert got["pairs"] == {"incomplete_answer": 2, "mismatched_answer": 1}
    assert got["accuracy"]["incomplete_answer"] == pytest.approx((expected[0] + 0.5) / 2)
    entry = evaluate_condition(model, tok, records, MAX_LEN, 2, mcq=False, probe=probe)
    assert entry["preference"]["wins"] == expected


def test_load_probe_names_the_line_of_a_bad_row(tmp_path):
    records = _records()
    path = tmp_path / "probe.jsonl"
    path.write_text(json.dumps({"of": records[0].id, "corruption": "x", "output": "y"}) + "\n"
                    + json.dumps({"of": "someone-else", "corruption": "x", "output": "y"}) + "\n", encoding="utf-8")
    with pytest.raises(CluesError, match=r"probe.jsonl:2: of: 'someone-else'"):
        load_probe(path, records)
    path.write_text(json.dumps({"of": records[0].id, "corruption": "x"}) + "\n", encoding="utf-8")
    with pytest.raises(CluesError, match=r"probe.jsonl:1: output"):
        load_probe(path, records)


def test_paired_difference_and_verdict():
    mean, half = paired_difference([1, 1, 1, 0], [0, 1, 0, 0])
    assert mean == pytest.approx(0.5)
    diffs = [1, 0, 1, 0]
    sd = (sum((d - 0.5) ** 2 for d in diffs) / 3) ** 0.5
    assert half == pytest.approx(1.96 * sd / 2)
    assert judge(0.5, 0.1) == "better than" and judge(-0.5, 0.1) == "worse than"
    assert judge(0.05, 0.1) == "no different, within noise, from"
    results = {"conditions": {"mixed": {"preference": {"wins": [0.0] * 50 + [1.0] * 50}},
                              "clues": {"preference": {"wins": [1.0] * 100}}}}
    (line,) = verdict(results)
    assert line.startswith("**clues** (quality probe): better than training on all records") and "100.0% of 100 probe pairs" in line
    assert verdict({"conditions": {"mixed": {}}}) == []
    # With an oracle clearly better than mixed, each selection says how much of its gain it recovers.
    results["conditions"]["oracle"] = {"preference": {"wins": [1.0] * 100}}
    results["conditions"]["random"] = {"preference": {"wins": [0.0] * 25 + [1.0] * 75}}
    lines = verdict(results)
    assert lines[0].endswith("It recovers 100% of the oracle's gain.") and "recovers" not in lines[1]
    assert lines[2].startswith("**random** (quality probe): better than") and lines[2].endswith("It recovers 50% of the oracle's gain.")
    results["conditions"]["oracle"] = {"preference": {"wins": [0.0] * 50 + [1.0] * 50}}  # no gain: nothing to recover
    assert not any("recovers" in line for line in verdict(results))
    # A positive but noise-sized oracle gain (2 pairs of 100 better: +0.02, 95% half-width 1.96 * 0.141 / 10
    # = 0.028) is no gain either: dividing by it would claim "recovers 2500%".
    results["conditions"]["oracle"] = {"preference": {"wins": [1.0] * 2 + [0.0] * 48 + [1.0] * 50}}
    assert not any("recovers" in line for line in verdict(results))
    # federated conditions against their own references, in the same results (clues federate --compare)
    results["conditions"].update({f"fl-{name}": entry for name, entry in results["conditions"].items()})
    federated = verdict(results)[3:]
    assert [line.split("**")[1] for line in federated] == ["fl-clues", "fl-oracle", "fl-random"]
    assert "training on clean records only" in federated[1]


def test_a_retraining_condition_takes_as_many_steps_as_training_on_all_records(tiny_model_dir, tmp_path):
    """equal_steps: the oracle (clean records only) trains the steps of the run on all records."""
    from clues import protocol
    from clues.data import shipped
    from clues.protocol import Message
    from clues.silo import Silo

    records = shipped.load("fiqa", "all")[:12]
    labels = {r.id: i % 3 != 0 for i, r in enumerate(records)}  # 8 clean of 12
    silo = Silo("bank", records, tmp_path / "bank", labels)
    config = {"model": str(tiny_model_dir), "epochs": 2, "batch_size": 4, "max_length": 64}

    def steps(subset, **extra):
        silo.handle(Message(protocol.TRAIN, {"tag": subset, "subset": subset, "config": config, **extra}))
        run = tmp_path / "bank" / "runs" / (tmp_path / "bank" / "runs" / f"{subset}.latest").read_text()
        last = sorted(run.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))[-1]
        return json.loads((last / "trainer_meta.json").read_text())["step"]

    assert steps("all") == 2 * 3  # 12 records, batch 4, 2 epochs
    assert steps("clean") == 2 * 2  # equal epochs: fewer steps
    assert steps("clean", steps_of="all") == 2 * 3
