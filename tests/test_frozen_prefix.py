"""Response-only logits and the cached frozen prefix give the plain forward's losses, gradients,
training runs and scores (to float32 rounding), and the frozen part runs once per record."""

from __future__ import annotations

import shutil
from dataclasses import replace

import pytest
import torch

from clues.data.batching import pad_batch
from clues.data.records import record_from_dict
from clues.data.template import encode
from clues.loss import batch_record_losses, per_record_loss, response_losses
from clues.model import LoraSettings, attach_lora
from clues.model.frozen_prefix import STATES, fill_prefix, first_adapted_layer, prefix_layer
from clues.scoring.params import select_blocks
from clues.scoring.per_sample import per_record_gradients
from conftest import make_tiny_llama

TEXTS = [
    ("What is a bond?", "", "A loan to a company or a government that pays interest."),
    ("Answer briefly", "What causes anemia?", "Too few red blood cells, often from a lack of iron."),
    ("Say yes.", "", "Yes."),
    ("Q", "What is a stock?", "A share of ownership in a company, traded on an exchange."),
    ("Define inflation", "", "A general rise in prices over time, which lowers what money buys."),
]


def _records():
    return [record_from_dict({"id": f"r{i}", "instruction": a, "input": b, "output": c}) for i, (a, b, c) in enumerate(TEXTS)]


def _lora_model(tokenizer, layers=1, total=3):
    """A tiny 3-layer Llama with LoRA (non-zero B, so the adapter matters) on its top ``layers`` layers."""
    model = attach_lora(make_tiny_llama(tokenizer, layers=total), LoraSettings(r=4, alpha=8, dropout=0.0, layers=layers))
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return model.eval()


def _encodings(tokenizer):
    return [encode(r, tokenizer, 64) for r in _records()]


def _close(got, want, rtol=1e-5):
    """Float32 agreement, relative to the size of the whole tensor (rounding scales with it)."""
    scale = want.abs().max().clamp(min=1e-30)
    assert float((got - want).abs().max() / scale) <= rtol


def test_lora_layers_adapts_only_the_top_layers(tiny_tokenizer):
    model = _lora_model(tiny_tokenizer, layers=1, total=3)
    adapted = {int(n.split(".layers.")[1].split(".")[0]) for n, _ in model.named_parameters() if ".lora_" in n}
    assert adapted == {2}
    assert first_adapted_layer(model) == 2 and prefix_layer(model) == 2
    everywhere = _lora_model(tiny_tokenizer, layers=None, total=3)
    assert first_adapted_layer(everywhere) == 0 and prefix_layer(everywhere) == 0
    plain = make_tiny_llama(tiny_tokenizer, layers=3)  # loaded for evaluation: every flag on, nothing adapted
    assert all(p.requires_grad for p in plain.parameters())
    assert first_adapted_layer(plain) is None and prefix_layer(plain) == 3


def test_response_only_logits_equal_full_logits(tiny_tokenizer):
    model = _lora_model(tiny_tokenizer)
    batch = pad_batch(_encodings(tiny_tokenizer), tiny_tokenizer.pad_token_id)
    with torch.no_grad():
        full = per_record_loss(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                               batch["labels"])
        hidden = model.get_base_model().model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        fast = response_losses(hidden, model.get_base_model().lm_head, batch["labels"])
    _close(fast, full)


def test_cached_prefix_gives_the_same_losses_and_gradients(tiny_tokenizer):
    model = _lora_model(tiny_tokenizer)
    plain = _encodings(tiny_tokenizer)
    cached = _encodings(tiny_tokenizer)
    assert fill_prefix(model, cached, tiny_tokenizer.pad_token_id, batch_size=2) == 2
    assert all(e["prefix"].shape == (len(e["input_ids"]), 32) for e in cached)
    params = [p for n, p in model.named_parameters() if ".lora_" in n]
    results = []
    for encs in (plain, cached):
        batch = pad_batch(encs, tiny_tokenizer.pad_token_id)
        assert ("prefix" in batch) == (encs is cached)
        model.zero_grad(set_to_none=True)
        losses = batch_record_losses(model, batch)
        losses.sum().backward()
        results.append((losses.detach(), torch.cat([p.grad.reshape(-1) for p in params])))
    _close(results[1][0], results[0][0])
    _close(results[1][1], results[0][1])


def test_cached_prefix_gives_the_same_per_record_gradients(tiny_tokenizer):
    model = _lora_model(tiny_tokenizer)
    blocks = select_blocks(model, "all")
    for b in blocks:
        b.param.requires_grad_(True)
    plain, cached = _encodings(tiny_tokenizer), _encodings(tiny_tokenizer)
    fill_prefix(model, cached, tiny_tokenizer.pad_token_id)
    want = dict(per_record_gradients(model, pad_batch(plain, tiny_tokenizer.pad_token_id), blocks))
    got = dict(per_record_gradients(model, pad_batch(cached, tiny_tokenizer.pad_token_id), blocks))
    for block in blocks:
        _close(got[block], want[block])


def _bottom_layer_calls(model):
    calls = []
    model.get_base_model().model.layers[0].register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    return calls


def test_the_frozen_part_runs_once_per_record(tiny_tokenizer):
    STATES.clear()
    model = _lora_model(tiny_tokenizer)
    calls = _bottom_layer_calls(model)
    encs = _encodings(tiny_tokenizer)
    fill_prefix(model, encs, tiny_tokenizer.pad_token_id, batch_size=2)
    assert sum(calls) == len(encs)
    fill_prefix(model, encs, tiny_tokenizer.pad_token_id, batch_size=2)  # all cached: nothing runs
    batch_record_losses(model, pad_batch(encs, tiny_tokenizer.pad_token_id))  # runs from the cache
    assert sum(calls) == len(encs)

    # A later stage loads the same base model again and encodes the same records anew: reused.
    again = _lora_model(tiny_tokenizer, layers=1)
    again_calls = _bottom_layer_calls(again)
    fresh = _encodings(tiny_tokenizer)
    fill_prefix(again, fresh, tiny_tokenizer.pad_token_id)
    assert sum(again_calls) == 0
    assert all(torch.equal(a["prefix"], b["prefix"]) for a, b in zip(fresh, encs))

    # Another base model (other weights) never reuses them.
    other = attach_lora(make_tiny_llama(tiny_tokenizer, seed=1, layers=3), LoraSettings(r=4, layers=1)).eval()
    other_calls = _bottom_layer_calls(other)
    fill_prefix(other, _encodings(tiny_tokenizer), tiny_tokenizer.pad_token_id)
    assert sum(other_calls) == len(encs)


def test_a_cache_of_another_layout_is_refused(tiny_tokenizer):
    from clues.errors import CluesError

    top1, top2 = _lora_model(tiny_tokenizer, layers=1), _lora_model(tiny_tokenizer, layers=2)
    encs = _encodings(tiny_tokenizer)
    fill_prefix(top1, encs, tiny_tokenizer.pad_token_id)
    with pytest.raises(CluesError, match="another LoRA layout"):
        batch_record_losses(top2, pad_batch(encs, tiny_tokenizer.pad_token_id))


def _three_layer_dir(tmp_path, tokenizer):
    folder = tmp_path / "tiny-llama-3"
    make_tiny_llama(tokenizer, layers=3).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_cached_training_equals_uncached_and_resumes_across_the_switch(tmp_path, tiny_tokenizer):
    from clues.train import TrainConfig, train

    model_dir = _three_layer_dir(tmp_path, tiny_tokenizer)
    records = _records() * 2
    adapters = {}
    for cache in (False, True):
        config = TrainConfig(model=str(model_dir), max_steps=4, batch_size=3, lora_layers=1, lora_dropout=0.05,
                             max_length=48, lr=1e-2, save_every=2, cache_frozen=cache)
        last = train(config, records, tmp_path / f"cache-{cache}")
        adapters[cache] = _tensors(last)
    for name in adapters[False]:
        _close(adapters[True][name], adapters[False][name], rtol=1e-4)
    # A run started uncached finishes cached: the switch changes speed, not the result.
    config = TrainConfig(model=str(model_dir), max_steps=4, batch_size=3, lora_layers=1, lora_dropout=0.05,
                         max_length=48, lr=1e-2, save_every=2, cache_frozen=False)
    train(config, records, tmp_path / "switch")
    shutil.rmtree(tmp_path / "switch" / "checkpoint-4")
    last = train(replace(config, cache_frozen=True), records, tmp_path / "switch")
    for name, value in _tensors(last).items():
        _close(value, adapters[False][name], rtol=1e-4)


def _tensors(checkpoint):
    from safetensors.torch import load_file

    return load_file(str(checkpoint / "adapter_model.safetensors"))


def test_cached_scores_equal_uncached(tmp_path, tiny_tokenizer):
    from clues.scoring.engine import ScoreSettings, score_run
    from clues.train import TrainConfig, train

    model_dir = _three_layer_dir(tmp_path, tiny_tokenizer)
    records = _records()
    config = TrainConfig(model=str(model_dir), max_steps=2, batch_size=3, lora_layers=1, max_length=48, lr=1e-2, save_every=1)
    run = tmp_path / "run"
    train(config, records, run)
    totals = [score_run(run, {"data": records}, records[:2], ScoreSettings(batch_size=2, cache_frozen=cache)).total("data")
              for cache in (False, True)]
    _close(totals[1], totals[0], rtol=1e-4)


def test_evaluation_shares_the_prefix_between_the_base_model_and_its_adapters(tiny_tokenizer):
    from clues.evaluate import per_domain_loss

    STATES.clear()
    records = _records()
    base = make_tiny_llama(tiny_tokenizer, layers=3)
    adapted = _lora_model(tiny_tokenizer, layers=1, total=3)
    plain = []
    for m in (base, adapted):  # the plain forward, one record at a time (records have no domain: "all")
        with torch.no_grad():
            losses = [per_record_loss(m(input_ids=b["input_ids"]).logits, b["labels"]).item()
                      for b in (pad_batch([e], tiny_tokenizer.pad_token_id) for e in _encodings(tiny_tokenizer))]
        plain.append({"all": sum(losses) / len(losses)})
    calls = _bottom_layer_calls(adapted)
    base.model.layers[0].register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    shared = [per_domain_loss(m, tiny_tokenizer, records, 64, 2, prefix_start=2) for m in (base, adapted)]
    assert sum(calls) == len(records)  # the base model filled the cache, the adapted one reused it
    for got, want in zip(shared, plain):
        assert got.keys() == want.keys() and all(abs(got[d] - want[d]) <= 1e-5 * abs(want[d]) for d in want)
