"""The ``loss`` baseline against a written-out reference: each record is scored by a half run that
never trained on it (read from the run's own data fingerprint), one record at a time, raw logits."""

from __future__ import annotations

import torch

from clues import checkpoint as ckpt
from clues.baselines import ScoringInputs, score_records
from clues.data import shipped
from clues.data.template import IGNORE_INDEX, encode
from clues.scoring.engine import ScoreSettings
from clues.train import TrainConfig, data_fingerprint, train

MAX_LENGTH = 96


def _reference_loss(model, tokenizer, record) -> float:
    enc = encode(record, tokenizer, MAX_LENGTH)
    ids = enc["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), dim=-1)
    picked = [logp[p - 1, ids[p]] for p in range(1, len(ids)) if enc["labels"][p] != IGNORE_INDEX]
    return -float(torch.stack(picked).mean())


def test_every_record_is_scored_by_a_run_that_never_saw_it(tmp_path, tiny_model_dir):
    from peft import PeftModel

    from clues.model import load_model

    fiqa = shipped.load("fiqa", "all")
    records, anchors = [fiqa[i] for i in range(7)], [fiqa[i] for i in (50, 51)]
    warmup = tmp_path / "runs" / "mixed-1"
    train(TrainConfig(model=str(tiny_model_dir), epochs=2, batch_size=4, max_length=MAX_LENGTH, lr=1e-2), records, warmup)
    inputs = ScoringInputs(base_model=str(tiny_model_dir), validation=anchors, run_dir=warmup,
                           settings=ScoreSettings(batch_size=3), max_length=MAX_LENGTH)
    scores = score_records("loss", inputs, {"data": records, "anchor": anchors})

    halves = sorted(warmup.parent.glob("mixed-1-heldout-*"))
    assert len(halves) == 2
    trained_on = []
    for half in halves:
        assert ckpt.load_checkpoint_meta(ckpt.latest_checkpoint(half))["config"]["epochs"] == 2  # the warm-up's settings
        trained_on.append(_ids_of(half, records))
    assert trained_on[0].isdisjoint(trained_on[1]) and trained_on[0] | trained_on[1] == {r.id for r in records}

    models = []
    for half in halves:
        base, tokenizer = load_model(str(tiny_model_dir))
        models.append(PeftModel.from_pretrained(base, str(ckpt.latest_checkpoint(half))).eval())
    for i, record in enumerate(records):
        scorer = models[1] if record.id in trained_on[0] else models[0]
        assert abs(scores["data"][i].item() + _reference_loss(scorer, tokenizer, record)) < 1e-5
    for i, anchor in enumerate(anchors):
        expected = -sum(_reference_loss(m, tokenizer, anchor) for m in models) / 2
        assert abs(scores["anchor"][i].item() - expected) < 1e-5


def _ids_of(half, records) -> set[str]:
    """The records a half run trained on, found by its data fingerprint (the fold split is not re-derived)."""
    from itertools import combinations

    wanted = ckpt.load_checkpoint_meta(ckpt.latest_checkpoint(half))["data"]["sha256"]
    for size in range(1, len(records)):
        for subset in combinations(records, size):
            if data_fingerprint(list(subset)) == wanted:
                return {r.id for r in subset}
    raise AssertionError(f"{half} trained on no subset of the records")
