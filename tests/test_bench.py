"""Every selection method through the collaborative pipeline (`clues bench`), on a tiny model.

The scorers themselves are checked against slow references in test_baselines_*.py; here: each method
is thresholded by its own anchor scores, ``random`` and ``--match-count`` keep CLUES' count per silo,
nothing private crosses the boundary whatever the method, and the report compares the methods.
"""

from __future__ import annotations

import json
import math

import pytest
from rich.console import Console
from typer.testing import CliRunner

from clues import protocol
from clues.methods import METHODS
from clues.cli import app
from clues.config import make_config
from clues.data import load_records
from clues.io import read_jsonl
from clues.metrics import roc_auc, roc_curve
from clues.select import own_domain_anchors, select_top, threshold
from clues.server.fleet import open_local_fleet
from clues.server.merging import MergingServer


@pytest.fixture(scope="module")
def consortium(tmp_path_factory):
    from conftest import small_consortium

    return small_consortium(tmp_path_factory.mktemp("bench"), 16, {"validation": 3, "anchor": 2, "test": 3})


def _values(consortium, model_dir, out, **select):
    silos, public, labels = consortium
    return {"silos": silos, **public, "labels": labels, "model": str(model_dir), "out": str(out),
            "conditions": ["mixed", *METHODS, "oracle"],
            "train": {"epochs": 2, "batch_size": 8, "max_length": 96}, "score": {"batch_size": 8}, "select": select}


def _stage(out, name) -> dict:
    return json.loads((out / ".stages" / f"{name}.json").read_text())["result"]


def test_every_method_is_thresholded_by_its_own_anchor_scores_and_keeps_data_private(
        consortium, tiny_model_dir, tiny_tokenizer, tmp_path):
    crossed: list[tuple[str, bytes]] = []
    out = tmp_path / "run"

    def serve(config):  # fresh in-process silos whose every crossing is tapped
        fleet = open_local_fleet(config, tap=lambda name, direction, blob: crossed.append((direction, blob)))
        return MergingServer(config, fleet, Console(quiet=True)).run()

    results = serve(make_config(_values(consortium, tiny_model_dir, out)))

    assert set(results["conditions"]) == {"mixed", "oracle", *METHODS}
    assert set(results["selection"]) == set(METHODS) and set(results["scoring_seconds"]) == set(METHODS)
    silos = list(consortium[0])
    anchor_records = load_records(consortium[1]["anchor"])
    for method in METHODS:
        # each silo's tau from its own scores of the anchors of its own domain (the run's defaults)
        replies = {silo: _stage(out, f"score-{method}-{silo}") for silo in silos}
        assert all(r["domains"] for r in replies.values())
        own = {silo: own_domain_anchors(r, anchor_records) for silo, r in replies.items()}
        assert all(len(own[s]) < len(replies[s]["anchor_scores"]) for s in silos)
        for silo in silos:
            chosen = results["selection"][method][silo]
            if method == "random":  # the same count as CLUES, a different choice
                assert chosen["kept"] == results["selection"]["clues"][silo]["kept"] and chosen["tau"] is None
            else:  # per-silo tau = the conformal rank of this method's own-domain anchor scores
                assert chosen["tau"] == threshold(own[silo], "conformal:0.1") == min(own[silo])
            assert chosen["tp"] + chosen["fp"] == chosen["kept"] and chosen["total"] == 16
            roc = results["scores"][method][silo]["roc"]
            assert len(roc) == 101 and roc[0] >= 0.0 and roc[-1] == 1.0

    # the silo's own files: one scores and kept file per method, CLUES' under the plain names
    silo_dir = out / "silos" / silos[0]
    assert {p.name for p in silo_dir.glob("scores*.jsonl")} == {"scores.jsonl"} | {f"scores-{m}.jsonl" for m in METHODS if m != "clues"}
    kept = read_jsonl(silo_dir / "kept-less.jsonl")
    assert len(kept) == results["selection"]["less"][silos[0]]["kept"]

    # whatever the method, only counts, summaries, anchor scores and adapters leave a silo
    from conftest import assert_nothing_private_crossed

    outgoing = [protocol.Message.from_bytes(blob) for direction, blob in crossed if direction == "silo->server"]
    assert {m.meta.get("method") for m in outgoing if m.kind == protocol.SCORES} == set(METHODS)
    private = [row for path in consortium[0].values() for row in read_jsonl(path)]
    raw_wire = b"\n".join(blob for direction, blob in crossed if direction == "silo->server")
    assert_nothing_private_crossed(outgoing, raw_wire, private, tiny_tokenizer)

    report = (out / "report.md").read_text()
    assert "## Methods compared" in report and (out / "roc_curves.png").stat().st_size > 0
    table = report.split("## Methods compared")[1].split("\n## ")[0]
    assert all(f"| {name} |" in table for name in ("mixed", "oracle", *METHODS))

    # --match-count: only selection and what follows it rerun; every method keeps CLUES' count
    crossed.clear()
    matched = serve(make_config(_values(consortium, tiny_model_dir, out, match_count=True)))
    assert protocol.SCORE not in {protocol.Message.from_bytes(b).kind for d, b in crossed if d == "server->silo"}
    for method in METHODS:
        for silo in silos:
            assert matched["selection"][method][silo]["kept"] == matched["selection"]["clues"][silo]["kept"]
    assert matched["selection"]["clues"] == results["selection"]["clues"]


def test_bench_command_errors(tmp_path, consortium, tiny_model_dir):
    runner = CliRunner()
    cases = [
        ([], "exactly one of --scenario"),
        (["--scenario", "finance", "--config", "x.toml"], "exactly one of --scenario"),
        (["--scenario", "finance", "--methods", "clues,magic"], "unknown selection method 'magic'"),
        (["--scenario", "nowhere", "--out", str(tmp_path / "b")], "unknown scenario 'nowhere'"),
    ]
    silos, public, _ = consortium
    unlabelled = tmp_path / "unlabelled.toml"
    unlabelled.write_text("\n".join([f'{k} = "{v}"' for k, v in public.items()] + [f'model = "{tiny_model_dir}"', "[silos]"]
                                    + [f'{k} = "{v}"' for k, v in silos.items()]) + "\n")
    cases.append((["--config", str(unlabelled)], "needs labels"))
    labelled = tmp_path / "labelled.toml"
    labelled.write_text(f'labels = "{consortium[2]}"\n' + unlabelled.read_text())
    cases.append((["--config", str(labelled), "--merge", "magic"], "method"))
    cases.append((["--config", str(labelled), "--merge-space", "sideways"], "space"))
    for args, message in cases:
        result = runner.invoke(app, ["bench", *args])
        assert result.exit_code != 0, args
        assert message in str(result.exception) + result.output, (args, result.output, result.exception)


def test_roc_curve_matches_auroc_and_handles_ties():
    import random

    rng = random.Random(3)
    scores = [rng.random() for _ in range(300)]
    clean = [rng.random() < 0.2 + 0.6 * s for s in scores]
    for values in (scores, [round(s, 1) for s in scores]):  # continuous, then heavily tied
        curve = roc_curve(values, clean)
        area = sum((a + b) / 2 for a, b in zip(curve, curve[1:])) / (len(curve) - 1)
        assert area == pytest.approx(roc_auc(values, clean), abs=2e-3)
        assert curve[0] == 0.0 and curve[-1] == 1.0 and all(a <= b + 1e-12 for a, b in zip(curve, curve[1:]))
    assert roc_curve([0.1, 0.2], [True, True]) is None


def test_select_top_keeps_the_best_count_with_nan_last():
    assert select_top([0.3, math.nan, 0.9, 0.3, 0.1], 3) == [True, False, True, True, False]
    assert select_top([0.5, 0.5, 0.5], 2) == [True, True, False]  # ties by position
    assert sum(select_top([1.0, math.nan], 2)) == 2


def test_pooled_selection_and_sweep_table(tmp_path):
    from clues.report import pooled_selection
    from clues.sweep import sweep_table, write_sweep

    def run(share):
        silo = {"total": 10, "kept": 6, "clean_total": 8, "tp": 5, "fp": 1, "fn": 3, "tn": 1, "auroc": 0.7 + share / 10}
        loss = {"d": 2.0}
        return {"selection": {"clues": {"a": silo, "b": {**silo, "auroc": 0.5}}},
                "conditions": {"mixed": {"test_loss": loss, "mean_test_loss": 2.0}, "clues": {"test_loss": loss, "mean_test_loss": 1.9,
                                                                                             "oracle_gain_recovered": 0.5},
                               "oracle": {"test_loss": loss, "mean_test_loss": 1.8}}}

    pooled = pooled_selection(run(0.2), "clues")
    assert pooled["precision"] == pytest.approx(10 / 12) and pooled["recall"] == pytest.approx(10 / 16)
    assert pooled["kept"] == pytest.approx(12 / 20) and pooled["auroc"] == pytest.approx((0.72 + 0.5) / 2)
    assert pooled_selection(run(0.2), "mixed")["precision"] == pytest.approx(16 / 20)
    assert pooled_selection(run(0.2), "oracle") == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "accuracy": 1.0,
                                                    "auroc": None, "kept": pytest.approx(16 / 20)}
    runs = {0.2: run(0.2), 0.8: run(0.8)}
    table = sweep_table(runs)
    assert table.headers[1:3] == ["recall @20%", "recall @80%"]
    assert table.rows[1][:3] == ["clues", "0.625", "0.625"] and "50.0%" in table.rows[1]
    paths = write_sweep(runs, tmp_path)
    assert "Methods across pollution shares" in paths["markdown"].read_text()
    assert (tmp_path / "sweep_recall.png").stat().st_size > 0


def test_federated_bench_trains_every_method_with_fedavg(consortium, tiny_model_dir, tmp_path):
    """In-process silos: each baseline is scored in the silos, thresholded per silo as in merging mode, then
    trained with FedAvg."""
    from clues.config import FedSettings
    from clues.data import load_records
    from clues.metrics import load_labels
    from clues.server.federated import FederatedServer
    from clues.server.fleet import LocalFleet
    from clues.silo import Silo

    silos, public, labels = consortium
    out = tmp_path / "fed"
    config = make_config({**_values(consortium, tiny_model_dir, out), "score": {"batch_size": 8, "precondition": "none"},
                          "eval_batch_size": 8})
    label_rows = load_labels(labels)
    fleet = LocalFleet(Silo(n, load_records(p), out / "silos" / n, {i: r["clean"] for i, r in label_rows.items()})
                       for n, p in silos.items())
    results = FederatedServer(config, FedSettings(rounds=2, local_steps=1, score_rounds=(1, 2)), fleet,
                              Console(quiet=True)).run()
    assert set(results["conditions"]) == {"fl-mixed", "fl-oracle", *(f"fl-{m}" for m in METHODS)}
    assert set(results["selection"]) == {f"fl-{m}" for m in METHODS}
    anchor_records = load_records(public["anchor"])
    for name in silos:
        assert results["selection"]["fl-random"][name]["kept"] == results["selection"]["fl-clues"][name]["kept"]
        for method in ("perplexity", "clues+perplexity+tail"):  # each silo's tau from its own-domain anchors
            reply = _stage(out, f"fl-{method}")["value"]["scores"][name]
            own = own_domain_anchors(reply, anchor_records)
            assert len(own) < len(reply["anchor_scores"])
            assert results["selection"][f"fl-{method}"][name]["tau"] == threshold(own, "conformal:0.1")
    # LESS and DataInf needed a local warm-up run in every silo, trained once for both
    assert [r["kind"] for r in results["federated"]["rounds"]].count(protocol.TRAIN) == 1
    report = (out / "report.md").read_text()
    assert "## Methods compared" in report and "| fl-less |" in report
