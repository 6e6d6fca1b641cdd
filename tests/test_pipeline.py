"""`clues run` end to end on a tiny model: the privacy boundary, resumption and the outputs."""

from __future__ import annotations

import json

import pytest
from rich.console import Console

from clues import protocol
from clues.config import make_config
from clues.data import load_records
from clues.io import read_jsonl
from clues.select import own_domain_anchors
from clues.server.fleet import open_local_fleet
from clues.server.merging import MergingServer


@pytest.fixture(scope="module")
def consortium(tmp_path_factory):
    """Two small silos cut from the shipped `mixed` benchmark (real text, real corruptions)."""
    from conftest import small_consortium

    return small_consortium(tmp_path_factory.mktemp("consortium"), 16, {"validation": 3, "anchor": 2, "test": 3})


def _config(consortium, model_dir, out):
    silos, public, labels = consortium
    return make_config({
        "silos": silos, **public, "labels": labels, "model": str(model_dir), "out": str(out),
        "train": {"epochs": 2, "batch_size": 8, "max_length": 96},
        "score": {"batch_size": 8},
    })


def Server(config, console):
    """The merging server over in-process silos whose every crossing is tapped into ``crossed``."""
    return MergingServer(config, open_local_fleet(config, console, tap=lambda *c: crossed.append(c)), console)


crossed: list[tuple[str, str, bytes]] = []


def test_run_keeps_private_data_inside_silos_and_resumes(consortium, tiny_model_dir, tiny_tokenizer, tmp_path):
    crossed.clear()
    out = tmp_path / "run"
    config = _config(consortium, tiny_model_dir, out)
    results = Server(config, Console(quiet=True)).run()

    # -- outputs ---------------------------------------------------------------------------------
    for name in ("results.json", "report.md", "report.html", "boundary_log.jsonl"):
        assert (out / name).exists(), name
    assert set(results["conditions"]) == {"mixed", "clues", "oracle"}
    assert set(results["selection"]["clues"]) == {"clinic", "bank"}
    for entry in results["selection"]["clues"].values():
        assert entry["total"] == 16 and 0 <= entry["kept"] <= 16
    # per silo, tau is the lowest of its own-domain anchor scores (conformal:0.1 with 2 anchors per domain)
    anchors = load_records(consortium[1]["anchor"])
    for silo, entry in results["selection"]["clues"].items():
        reply = json.loads((out / ".stages" / f"score-clues-{silo}.json").read_text())["result"]
        assert entry["tau"] == min(own_domain_anchors(reply, anchors))
    saved = json.loads((out / "results.json").read_text())
    assert saved["conditions"]["mixed"]["test_loss"] == results["conditions"]["mixed"]["test_loss"]
    # per corruption type, from the silos' aggregates: AUROC, AUPRC and the share dropped, in the report too
    labels = read_jsonl(consortium[2])
    for silo, entry in results["selection"]["clues"].items():
        ids = {r["id"] for r in read_jsonl(consortium[0][silo])}
        kinds = {r["corruption"] for r in labels if r["id"] in ids and not r["clean"]}
        assert set(entry["by_corruption"]) == kinds
        assert all({"auroc", "auprc", "recall", "count", "base_rate"} <= set(m) for m in entry["by_corruption"].values())
        assert set(results["scores"]["clues"][silo]["by_corruption"]) == kinds
        # Recounted from the silo's own score file and the labels: what was kept, and per corruption
        # type the AUROC (clean above bad, ties half) and the share of bad records dropped.
        rows = read_jsonl(out / "silos" / silo / "scores.jsonl")
        label = {r["id"]: r for r in labels}
        assert entry["kept"] == sum(r["score"] >= entry["tau"] for r in rows)
        clean_scores = [r["score"] for r in rows if label[r["id"]]["clean"]]
        for kind, measured in entry["by_corruption"].items():
            bad = [r["score"] for r in rows if not label[r["id"]]["clean"] and label[r["id"]]["corruption"] == kind]
            pairs = [1.0 if c > b else 0.5 if c == b else 0.0 for c in clean_scores for b in bad]
            assert measured["count"] == len(bad)
            assert measured["auroc"] == pytest.approx(sum(pairs) / len(pairs))
            assert measured["recall"] == pytest.approx(sum(b < entry["tau"] for b in bad) / len(bad))
    assert "## Per corruption type" in (out / "report.md").read_text()

    # -- the boundary ------------------------------------------------------------------------------
    silos, _, _ = consortium
    private = [row for path in silos.values() for row in read_jsonl(path)]
    outgoing = [protocol.Message.from_bytes(blob) for _, direction, blob in crossed if direction == "silo->server"]
    assert {m.kind for m in outgoing} == {protocol.INFO, protocol.ADAPTER, protocol.SCORES, protocol.SELECTION}
    raw_wire = b"\n".join(blob for _, direction, blob in crossed if direction == "silo->server")
    from conftest import assert_nothing_private_crossed

    assert_nothing_private_crossed(outgoing, raw_wire, private, tiny_tokenizer)
    log = read_jsonl(out / "boundary_log.jsonl")
    assert len(log) == len(crossed) and {r["direction"] for r in log} == {"server->silo", "silo->server"}
    from conftest import assert_crossings_documented

    assert_crossings_documented(log)  # every field that crossed has its row in docs/privacy.md

    # -- resume: a rerun with the same inputs and config asks the silos nothing ---------------------
    crossed.clear()
    again = Server(config, Console(quiet=True)).run()
    assert crossed == []
    assert again["conditions"] == results["conditions"]
    # a changed option reruns what depends on it (here: the threshold, so selection and retraining)
    changed = make_config({**json.loads(json.dumps(_raw(consortium, tiny_model_dir, out))), "select": {"policy": "mean"}})
    third = Server(changed, Console(quiet=True)).run()
    assert {m for _, _, b in crossed for m in [protocol.Message.from_bytes(b).kind]} >= {protocol.SELECT, protocol.TRAIN}
    assert protocol.SCORE not in {protocol.Message.from_bytes(b).kind for _, _, b in crossed}
    assert all(e["kept"] == e["total"] or e["kept"] >= 1 for e in third["selection"]["clues"].values())
    # another merge of the same trained silos is another model: merged and evaluated again, as a fresh run would
    crossed.clear()
    linear = {**json.loads(json.dumps(_raw(consortium, tiny_model_dir, out))), "select": {"policy": "mean"},
              "merge": {"method": "linear"}}
    remerged = Server(make_config(linear), Console(quiet=True)).run()
    assert protocol.TRAIN not in {protocol.Message.from_bytes(b).kind for _, _, b in crossed}  # training reused
    fresh = Server(make_config({**linear, "out": str(tmp_path / "fresh")}), Console(quiet=True)).run()
    assert remerged["conditions"] == fresh["conditions"] != third["conditions"]
    # an edited silo file (same ids, one answer changed): that silo trains afresh in a new run folder,
    # instead of refusing to resume its old checkpoints; the other silo's stages are reused
    from clues.io import write_jsonl

    rows = read_jsonl(silos["bank"])
    rows[0] = {**rows[0], "output": rows[0]["output"] + " (edited)"}
    edited = tmp_path / "bank-edited.jsonl"
    write_jsonl(edited, rows)
    crossed.clear()
    Server(make_config({**linear, "silos": {**silos, "bank": str(edited)}}), Console(quiet=True)).run()
    asked = {(silo, protocol.Message.from_bytes(b).kind) for silo, d, b in crossed if d == "server->silo"}
    assert {silo for silo, kind in asked if kind == protocol.TRAIN} == {"bank"}
    assert len(list((out / "silos" / "bank" / "runs").glob("mixed-*"))) == 2


def _raw(consortium, model_dir, out):
    silos, public, labels = consortium
    return {"silos": silos, **public, "labels": labels, "model": str(model_dir), "out": str(out),
            "train": {"epochs": 2, "batch_size": 8, "max_length": 96}, "score": {"batch_size": 8}}


def test_config_errors_name_the_problem(tmp_path):
    from clues.config import load_toml
    from clues.errors import CluesError

    bad = tmp_path / "c.toml"
    bad.write_text('validation = "v.jsonl"\nanchor = "a.jsonl"\ntest = "t.jsonl"\n[silos]\na = "a.jsonl"\n[train]\nepoch = 3\n')
    with pytest.raises(CluesError, match=r"c.toml \[train\]: unknown key 'epoch'"):
        make_config(load_toml(bad))
    bad.write_text('validation = "v.jsonl"\n[silos]\na = "a.jsonl"\n')
    with pytest.raises(CluesError, match="missing 'anchor'"):
        make_config(load_toml(bad))
    bad.write_text("validation = \n")
    with pytest.raises(CluesError, match="invalid TOML"):
        load_toml(bad)
