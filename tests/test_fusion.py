"""Fused scores: mean within-silo percentile of several scorers, checked against a written-out rank count."""

import pytest
import torch

from clues.baselines import ScoringInputs, score_records
from clues.methods import METHODS, NEEDS_WARMUP
from clues.baselines.fusion import FUSIONS, fuse, percentiles
from clues.data import shipped
from clues.scoring.engine import ScoreSettings


def _slow_percentile(reference, value):
    below = sum(1 for r in reference if r < value)
    equal = sum(1 for r in reference if r == value)
    return (below + equal / 2) / len(reference)


def test_percentiles_are_mid_ranks():
    reference = [3.0, 1.0, 2.0, 2.0, 5.0]
    values = [0.0, 1.0, 2.0, 2.5, 5.0, 9.0]
    got = percentiles(reference, values).tolist()
    assert got == pytest.approx([_slow_percentile(reference, v) for v in values])
    assert got[0] == 0.0 and got[-1] == 1.0 and got[2] == pytest.approx(0.4)


def test_fuse_is_the_mean_percentile_and_ignores_scale():
    a = {"data": torch.tensor([1.0, 2.0, 3.0, 4.0]), "anchor": torch.tensor([2.5])}
    b = {"data": torch.tensor([400.0, 100.0, 300.0, 200.0]), "anchor": torch.tensor([1000.0])}
    fused = fuse([a, b])
    for i in range(4):
        expected = (_slow_percentile(a["data"].tolist(), a["data"][i]) + _slow_percentile(b["data"].tolist(), b["data"][i])) / 2
        assert fused["data"][i].item() == pytest.approx(expected)
    assert fused["anchor"].item() == pytest.approx((0.5 + 1.0) / 2)
    scaled = fuse([{k: v * 1e6 - 7 for k, v in a.items()}, b])  # any increasing map of a component: same fusion
    assert torch.equal(scaled["data"], fused["data"]) and torch.equal(scaled["anchor"], fused["anchor"])


def test_fused_methods_are_registered_with_their_needs():
    for name, parts in FUSIONS.items():
        assert name in METHODS and all(p in METHODS for p in parts)
        assert (name in NEEDS_WARMUP) == any(p in NEEDS_WARMUP for p in parts)


@pytest.fixture()
def cheap_fusion(monkeypatch):
    """A fusion of two base-model scorers (no warm-up run needed), registered for one test."""
    import clues.baselines as baselines

    monkeypatch.setitem(FUSIONS, "perplexity+ifd", ("perplexity", "ifd"))
    monkeypatch.setattr(baselines, "METHODS", (*baselines.METHODS, "perplexity+ifd"))


def test_fused_method_equals_fusing_its_components(tiny_model_dir, cheap_fusion):
    fiqa = shipped.load("fiqa", "all")
    sets = {"data": [fiqa[i] for i in range(6)], "anchor": [fiqa[i] for i in (20, 21)]}
    inputs = ScoringInputs(base_model=str(tiny_model_dir), validation=[fiqa[30]], settings=ScoreSettings(batch_size=4),
                           max_length=96)
    got = score_records("perplexity+ifd", inputs, sets)
    expected = fuse([score_records("perplexity", inputs, sets), score_records("ifd", inputs, sets)])
    for name in sets:
        assert torch.allclose(got[name], expected[name])


def test_silo_scores_a_fused_method_from_the_components_it_already_has(tiny_model_dir, tmp_path, monkeypatch, cheap_fusion):
    from clues import protocol
    from clues.data import record_to_json
    from clues.protocol import Message
    from clues.silo import Silo

    fiqa = shipped.load("fiqa", "all")
    silo = Silo("bank", [fiqa[i] for i in range(6)], tmp_path / "bank")
    meta = {"run": "mixed", "settings": {"batch_size": 4}, "config": {"model": str(tiny_model_dir), "max_length": 96},
            "validation": [record_to_json(fiqa[30])], "anchor": [record_to_json(fiqa[i]) for i in (20, 21)]}
    alone = {m: silo.handle(Message(protocol.SCORE, {**meta, "method": m})).meta for m in ("perplexity", "ifd")}
    import clues.baselines as baselines

    calls = []
    real = baselines.score_records
    monkeypatch.setattr(baselines, "score_records", lambda m, *a: calls.append(m) or real(m, *a))
    fused = silo.handle(Message(protocol.SCORE, {**meta, "method": "perplexity+ifd"})).meta
    assert calls == ["perplexity+ifd"]  # the components came from what the silo had scored
    expected = fuse([{"anchor": torch.tensor(alone[m]["anchor_scores"]),
                      "data": torch.tensor(silo.scores[m])} for m in ("perplexity", "ifd")])
    assert fused["anchor_scores"] == pytest.approx(expected["anchor"].tolist())
    assert silo.scores["perplexity+ifd"] == pytest.approx(expected["data"].tolist())
