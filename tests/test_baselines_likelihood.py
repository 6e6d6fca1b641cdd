"""The perplexity, tail, IFD and RDS baselines against slow, written-out references on the tiny Llama.

The references score one record at a time: a batch of one, the raw logits or hidden states, and
every step written out here (log_softmax and an explicit gather of the response tokens' log-probs,
or the position weights and cosines), independent of :mod:`clues.loss` and of the batching code.
"""

from __future__ import annotations

import math
from collections import defaultdict

import pytest
import torch

from clues.baselines import ScoringInputs, score_records
from clues.baselines.likelihood import ZERO_DENOMINATOR_SCORE, ifd_score
from clues.data import shipped
from clues.data.records import record_from_dict
from clues.data.template import IGNORE_INDEX, encode
from clues.model import load_model
from clues.scoring.engine import ScoreSettings

MAX_LENGTH = 160  # some records fit, some lose prompt tokens, some a part of the response


def _records():
    """Data of mixed lengths (some truncated), validation from two domains plus domain-less records."""
    fiqa = shipped.load("fiqa", "all")
    med = shipped.load("medmeadow", "all")
    data = [fiqa[i] for i in (0, 3, 5, 8, 13)] + [med[i] for i in (4, 7)]
    data.append(record_from_dict({"id": "short", "instruction": "Say yes.", "output": "Yes.", "domain": "finance"}))
    validation = [fiqa[i] for i in (40, 41, 42)] + [med[i] for i in (1, 2)]
    validation.append(record_from_dict({"id": "free", "instruction": "Name a colour.", "output": "Blue."}))
    return data, validation


def _inputs(model_dir, validation, batch_size=8):
    return ScoringInputs(base_model=str(model_dir), validation=validation,
                         settings=ScoreSettings(batch_size=batch_size), max_length=MAX_LENGTH)


def _response_token_losses(model, input_ids, first_response) -> list[float]:
    """Minus the log-prob of each token ``input_ids[first_response:]``, given all tokens before it."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([input_ids])).logits[0].double()
    logp = torch.log_softmax(logits, dim=-1)
    return [-float(logp[p - 1, input_ids[p]]) for p in range(first_response, len(input_ids))]


def _response_logprob_loss(model, input_ids, first_response):
    """Minus the mean log-prob of tokens ``input_ids[first_response:]``, each given all tokens before it."""
    losses = _response_token_losses(model, input_ids, first_response)
    return sum(losses) / len(losses)


def _reference_tail(model, tokenizer, record):
    """Mean of the worst tenth (at least one) of the response tokens' losses given the prompt, written out."""
    enc = encode(record, tokenizer, MAX_LENGTH)
    n_prompt = sum(1 for label in enc["labels"] if label == IGNORE_INDEX)
    losses = sorted(_response_token_losses(model, enc["input_ids"], n_prompt), reverse=True)
    worst = losses[: max(1, len(losses) // 10)]
    return sum(worst) / len(worst)


def _reference_losses(model, tokenizer, record):
    """(loss given the prompt, loss of the response alone after one EOS), written out."""
    enc = encode(record, tokenizer, MAX_LENGTH)
    n_prompt = sum(1 for label in enc["labels"] if label == IGNORE_INDEX)
    response = enc["input_ids"][n_prompt:]
    if enc["truncated"] != "response":  # the reference's own reading of the response tokens
        assert response == tokenizer(record.output, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert tokenizer.bos_token_id is None  # the tiny tokenizer: the start token is EOS
    conditioned = _response_logprob_loss(model, enc["input_ids"], n_prompt)
    alone = _response_logprob_loss(model, [tokenizer.eos_token_id] + response, 1)
    return conditioned, alone


def _reference_embedding(model, tokenizer, record):
    ids = torch.tensor([encode(record, tokenizer, MAX_LENGTH)["input_ids"]])
    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0].double()
    weights = torch.arange(1, hidden.shape[0] + 1, dtype=torch.float64)
    vector = (weights[:, None] * hidden).sum(dim=0) / weights.sum()
    return vector / vector.norm()


@pytest.fixture()
def setup(tiny_model_dir):
    data, validation = _records()
    model, tokenizer = load_model(str(tiny_model_dir))
    return tiny_model_dir, model, tokenizer, data, validation


def test_fixture_has_truncated_records(setup):
    _, _, tokenizer, data, _ = setup
    kinds = {encode(r, tokenizer, MAX_LENGTH)["truncated"] for r in data}
    assert {None, "prompt", "response"} <= kinds


def test_perplexity_and_ifd_match_reference(setup):
    model_dir, model, tokenizer, data, validation = setup
    inputs = _inputs(model_dir, validation)
    perplexity = score_records("perplexity", inputs, {"data": data})["data"]
    ifd = score_records("ifd", inputs, {"data": data})["data"]
    for i, record in enumerate(data):
        conditioned, alone = _reference_losses(model, tokenizer, record)
        assert perplexity[i].item() == pytest.approx(-conditioned, rel=1e-5)
        assert ifd[i].item() == pytest.approx(-conditioned / alone, rel=1e-5)


def test_tail_matches_reference_and_differs_from_the_mean(setup):
    model_dir, model, tokenizer, data, validation = setup
    inputs = _inputs(model_dir, validation)
    tail = score_records("tail", inputs, {"data": data})["data"]
    perplexity = score_records("perplexity", inputs, {"data": data})["data"]
    lengths = []
    for i, record in enumerate(data):
        assert tail[i].item() == pytest.approx(-_reference_tail(model, tokenizer, record), rel=1e-5)
        enc = encode(record, tokenizer, MAX_LENGTH)
        lengths.append(sum(1 for label in enc["labels"] if label != IGNORE_INDEX))
    assert min(lengths) < 10 <= max(lengths)  # the one-token floor and a real tenth are both exercised
    # the worst tokens are worse than the average token
    assert all(t <= p + 1e-6 for t, p in zip(tail.tolist(), perplexity.tolist()))
    assert any(t < p - 1e-3 for t, p in zip(tail.tolist(), perplexity.tolist()))


def test_rds_matches_reference(setup):
    model_dir, model, tokenizer, data, validation = setup
    scores = score_records("rds", _inputs(model_dir, validation), {"data": data})["data"]
    by_domain = defaultdict(list)
    for record in validation:
        by_domain[record.domain or "all"].append(_reference_embedding(model, tokenizer, record))
    assert len(by_domain) == 3
    for i, record in enumerate(data):
        z = _reference_embedding(model, tokenizer, record)
        expected = max(
            sum(float(torch.dot(z, v) / (z.norm() * v.norm())) for v in group) / len(group)
            for group in by_domain.values()
        )
        assert scores[i].item() == pytest.approx(expected, rel=1e-5)
        assert -1.0 <= scores[i].item() <= 1.0


def test_last_hidden_state_is_after_the_final_norm(setup):
    """What rds pools: hidden_states[-1] is the normed decoder output, the LM head's input."""
    _, model, tokenizer, data, _ = setup
    ids = torch.tensor([encode(data[0], tokenizer, MAX_LENGTH)["input_ids"]])
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
        decoder = model.model(input_ids=ids).last_hidden_state
    torch.testing.assert_close(out.hidden_states[-1], decoder, rtol=0, atol=0)
    torch.testing.assert_close(model.lm_head(out.hidden_states[-1]), out.logits)


@pytest.mark.parametrize("method", ["perplexity", "tail", "ifd", "rds"])
def test_batched_equals_one_at_a_time_and_anchors_scored_alike(setup, method):
    model_dir, _, _, data, validation = setup
    anchors = [data[6], data[0], data[7]]
    one = score_records(method, _inputs(model_dir, validation, batch_size=1), {"data": data, "anchor": anchors})
    eight = score_records(method, _inputs(model_dir, validation, batch_size=8), {"data": data, "anchor": anchors})
    # float32 forward passes: the scores (log-probabilities, their ratios, cosines within [-1, 1])
    # carry a few float32 ulps of error that depends on the batch's summation order.
    for name in ("data", "anchor"):
        assert one[name].dtype == torch.float64 and torch.isfinite(one[name]).all()
        torch.testing.assert_close(eight[name], one[name], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(eight["anchor"], eight["data"][[6, 0, 7]], rtol=1e-5, atol=1e-6)


def test_empty_record_set(setup):
    model_dir, _, _, data, validation = setup
    for method in ("perplexity", "ifd", "rds"):
        scores = score_records(method, _inputs(model_dir, validation), {"data": data[:2], "anchor": []})
        assert scores["anchor"].shape == (0,)


def test_ifd_zero_denominator_is_guarded():
    assert ifd_score(2.0, 4.0) == -0.5
    for conditioned, alone in ((1.0, 0.0), (0.0, 0.0), (1.0, math.nan)):
        assert ifd_score(conditioned, alone) == ZERO_DENOMINATOR_SCORE


def test_direction_random_responses_score_lower():
    """On the shipped (pretrained) default model, a response of random tokens scores lower than the real
    one: far lower perplexity score on every record, and IFD near 1 (the prompt does not help) on average.
    The tiny random Llama cannot show this: it finds every token about equally likely."""
    import random
    from dataclasses import replace

    _, tokenizer = load_model("default")
    fiqa, med = shipped.load("fiqa", "all"), shipped.load("medmeadow", "all")
    clean = [fiqa[i] for i in range(0, 30, 6)] + [med[i] for i in range(0, 30, 6)]
    rng = random.Random(0)

    def scrambled(record):
        count = len(tokenizer(record.output, add_special_tokens=False, verbose=False)["input_ids"])
        return replace(record, output=tokenizer.decode([rng.randrange(2, len(tokenizer)) for _ in range(count)]))

    sets = {"data": clean, "noise": [scrambled(r) for r in clean]}
    inputs = ScoringInputs(base_model="default", validation=clean[:2], max_length=128)
    perplexity = score_records("perplexity", inputs, sets)
    assert (perplexity["data"] > perplexity["noise"] + 1.0).all()
    ifd = score_records("ifd", inputs, sets)
    assert ifd["data"].mean() > ifd["noise"].mean()
