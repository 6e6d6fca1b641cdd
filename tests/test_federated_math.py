"""The federated math against slow, obviously correct computations, as the merging path has them.

- ``fed-score``: a silo's score of each record is ``eta * <grad of that record's loss, g_val>``, here
  computed one record at a time with plain autograd on the mean response-token cross-entropy.
- ``fit`` + FedAvg: two rounds of two silos, each taking AdamW steps on its records in the seeded
  epoch order, the server averaging by record count; here re-done with one plain loop per silo
  (records one at a time, ``torch.optim.AdamW``, its state kept across rounds) and a weighted mean.

Both run the real silo handlers in this process (no transport), on the tiny model.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from clues import protocol
from clues.data import load_records
from clues.data.template import encode
from clues.protocol import Message


@pytest.fixture(scope="module")
def silo_files(tmp_path_factory):
    from conftest import small_consortium

    silos, _, _ = small_consortium(tmp_path_factory.mktemp("math"), 5, {"validation": 1, "anchor": 1, "test": 1})
    return silos


def _config(model_dir, **changes):
    from clues.train import TrainConfig

    values = {"model": str(model_dir), "batch_size": 2, "max_length": 64, "lora_dropout": 0.0, "lr": 1e-2, "seed": 3}
    return TrainConfig(**{**values, **changes})


def _global_adapter(config) -> dict[str, torch.Tensor]:
    """The seeded initial adapter, moved off its zero B so that every LoRA factor has a gradient."""
    from clues.federated_model import initial_adapter

    generator = torch.Generator().manual_seed(7)
    return {k: v + 0.05 * torch.randn(v.shape, generator=generator) for k, v in initial_adapter(config).items()}


def _reference_loss(model, record, tokenizer, config) -> torch.Tensor:
    """One record, batch size 1: mean cross-entropy of its response tokens (label -100 elsewhere)."""
    enc = encode(record, tokenizer, config.max_length, config.template)
    ids = torch.as_tensor(enc["input_ids"]).unsqueeze(0)
    labels = torch.as_tensor(enc["labels"])
    logits = model(input_ids=ids).logits[0, :-1].float()
    target = labels[1:]
    keep = target != -100
    return F.cross_entropy(logits[keep], target[keep])


def _lora_params(model) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def test_fed_score_is_eta_times_each_records_gradient_along_the_direction(silo_files, tiny_model_dir, tmp_path, one_thread):
    from clues.checkpoint import load_adapter_state
    from clues.federated_model import lora_model
    from clues.io import read_jsonl
    from clues.silo import Silo
    from clues.silo.fed_score import DIRECTION_PREFIX

    config = _config(tiny_model_dir)
    records = load_records(silo_files["clinic"])
    silo = Silo("clinic", records, tmp_path / "clinic")
    model, tokenizer = lora_model(config)
    generator = torch.Generator().manual_seed(11)
    direction = {name: torch.randn(p.shape, generator=generator) for name, p in _lora_params(model).items()}
    adapter, eta = _global_adapter(config), 0.37
    meta = {"round": 1, "checkpoint": "round-1", "eta": eta, "config": config.to_dict(),
            "settings": {"precondition": "none", "params": "all", "batch_size": 2}}
    wire = {DIRECTION_PREFIX + name: d for name, d in direction.items()}
    reply = silo.handle(Message(protocol.FED_SCORE, meta, {**adapter, **wire}))
    assert reply.kind == protocol.SCORES and reply.meta["summary"]["count"] == len(records)
    scored = [row["score"] for row in read_jsonl(tmp_path / "clinic" / "scores.jsonl")]

    load_adapter_state(model, adapter)
    model.eval()
    params = _lora_params(model)
    expected = []
    for record in records:
        grads = torch.autograd.grad(_reference_loss(model, record, tokenizer, config), list(params.values()))
        expected.append(eta * sum(float((g.double() * direction[name].double()).sum()) for name, g in zip(params, grads)))
    assert scored == pytest.approx(expected, rel=1e-4, abs=1e-7)
    # a second score round adds its column: the silo's score is the sum over checkpoints
    meta2 = {**meta, "round": 2, "checkpoint": "round-2", "eta": 2 * eta}
    silo.handle(Message(protocol.FED_SCORE, meta2, {**adapter, **wire}))
    summed = [row["score"] for row in read_jsonl(tmp_path / "clinic" / "scores.jsonl")]
    assert summed == pytest.approx([3 * e for e in expected], rel=1e-4, abs=1e-7)
    # a later run in the same folder that scores rounds 2 and 3 only: round 1's column is not its own
    meta3 = {**meta, "round": 3, "checkpoint": "round-3", "eta": eta, "checkpoints": ["round-2", "round-3"]}
    reply = silo.handle(Message(protocol.FED_SCORE, meta3, {**adapter, **wire}))
    assert reply.meta["checkpoints"] == ["round-2", "round-3"]
    rescored = [row["score"] for row in read_jsonl(tmp_path / "clinic" / "scores.jsonl")]
    assert rescored == pytest.approx([3 * e for e in expected], rel=1e-4, abs=1e-7)


def test_fedavg_rounds_of_local_adamw_steps_match_a_plain_loop(silo_files, tiny_model_dir, tmp_path, one_thread):
    from peft import get_peft_model_state_dict

    from clues.checkpoint import load_adapter_state
    from clues.federated_model import lora_model
    from clues.server.federated import fedavg
    from clues.silo import Silo
    from clues.train import epoch_order

    config = _config(tiny_model_dir)
    steps = 2
    data = {name: load_records(path) for name, path in silo_files.items()}
    data["bank"] = data["bank"][:3]  # unequal silos: FedAvg's weights matter
    silos = {name: Silo(name, records, tmp_path / name) for name, records in data.items()}
    start = _global_adapter(config)
    lrs = [config.lr, config.lr / 2]

    # -- the silos, through their handlers --------------------------------------------------------
    adapter = start
    for round_, lr in enumerate(lrs, 1):
        meta = {"tag": "fl-mixed", "subset": "all", "round": round_, "steps": steps, "lr": lr, "config": config.to_dict()}
        replies = {name: silo.handle(Message(protocol.FIT, meta, adapter)) for name, silo in silos.items()}
        adapter = fedavg(replies)

    # -- the same by hand ---------------------------------------------------------------------------
    model, tokenizer = lora_model(config)
    params = _lora_params(model)
    per_step = config.batch_size * config.grad_accum
    optimizers = {name: torch.optim.AdamW(params.values(), lr=lrs[0], betas=(config.adam_beta1, config.adam_beta2),
                                          eps=config.adam_eps, weight_decay=config.weight_decay) for name in data}
    taken = dict.fromkeys(data, 0)
    expected = start
    model.eval()  # no dropout (lora_dropout = 0 here): train and eval mode compute the same
    for lr in lrs:
        trained = {}
        for name, records in data.items():
            load_adapter_state(model, expected)
            optimizer = optimizers[name]
            for group in optimizer.param_groups:
                group["lr"] = lr
            for _ in range(steps):
                epoch, position = divmod(taken[name], math.ceil(len(records) / per_step))
                chosen = epoch_order(len(records), config.seed, epoch)[position * per_step : (position + 1) * per_step]
                loss = sum(_reference_loss(model, records[i], tokenizer, config) for i in chosen) / len(chosen)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(list(params.values()), config.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                taken[name] += 1
            trained[name] = {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}
        total = sum(len(records) for records in data.values())
        expected = {k: sum(len(data[n]) * trained[n][k] for n in data) / total for k in start}

    assert set(adapter) == set(expected)
    for key in expected:
        assert torch.allclose(adapter[key], expected[key], atol=2e-5, rtol=1e-4), key
    assert any(not torch.allclose(adapter[k], start[k]) for k in start)  # it did learn something
