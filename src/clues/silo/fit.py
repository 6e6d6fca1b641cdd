"""``fit`` (federated): a few local AdamW steps from the global adapter; reply the updated adapter.

The global adapter arrives with the request; the silo takes ``steps`` steps on a record subset
(all, kept, clean) and replies the adapter and the subset size (FedAvg's weight). The AdamW
moments and the step count persist in the work folder between rounds (one state per condition),
so a silo's optimizer keeps its own history while the weights come from the server each round;
round 1 starts them afresh, so a condition rerun from its first round (a resumed ``clues
federate``) repeats the same steps. The record order is the training module's seeded epoch
permutation, continued across rounds: a silo sees every record once per epoch whatever the number
of local steps.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file

from clues import checkpoint as ckpt
from clues import protocol
from clues.data.template import padding_id
from clues.io import write_json
from clues.protocol import Message
from clues.silo.train import records_digest

STATE_FILE = "state.json"
_ENCODINGS: dict[tuple, list[dict]] = {}  # content-addressed, so safe to share between silo objects


def fed_dir(silo, tag: str) -> Path:
    folder = silo.workdir / "federated" / tag
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _encodings(silo, which: str, records, tokenizer, config) -> list[dict]:
    """Encoded subset, cached per process by the records' ids and the encoding settings."""
    from clues.data.template import encode_all

    key = (silo.name, which, records_digest(records), config.model, config.max_length, config.template)
    if key not in _ENCODINGS:
        _ENCODINGS[key], _ = encode_all(records, tokenizer, config.max_length, config.template)
    return _ENCODINGS[key]


def answer(silo, message: Message) -> Message:
    from clues.data.batching import pad_batch
    from clues.federated_model import adapter_state, lora_model
    from clues.model.frozen_prefix import fill_prefix
    from clues.train import TrainConfig, epoch_order, optimizer_step, plan

    meta = message.meta
    config = TrainConfig.from_dict(meta["config"])
    which, tag, round_, steps = meta.get("subset", "all"), meta["tag"], int(meta["round"]), int(meta["steps"])
    records = silo.subset(which)
    reply = {"tag": tag, "round": round_, "records": len(records), "num_examples": len(records)}
    if not records:
        return Message(protocol.ADAPTER, {**reply, "steps": 0})
    model, tokenizer = lora_model(config)
    ckpt.load_adapter_state(model, message.tensors)
    encodings = _encodings(silo, which, records, tokenizer, config)
    if config.cache_frozen:  # the encodings live for the whole process: every round reuses the states
        fill_prefix(model, encodings, padding_id(tokenizer), config.batch_size)
    folder = fed_dir(silo, tag)
    fresh = round_ <= 1 or bool(meta.get("first")) or not (folder / STATE_FILE).exists()
    state = {"step": 0} if fresh else json.loads((folder / STATE_FILE).read_text())
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=float(meta["lr"]), betas=(config.adam_beta1, config.adam_beta2),
                                  eps=config.adam_eps, weight_decay=config.weight_decay)
    if not fresh and (folder / ckpt.OPTIMIZER_FILE).exists():
        ckpt.restore_moments(model, optimizer, ckpt.load_moments(folder), state["step"], folder)
    steps_per_epoch, _ = plan(len(records), config)
    per_step = config.records_per_step
    pad_id = padding_id(tokenizer)
    losses = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed * 1_000_003 + round_)  # LoRA dropout: reproducible per round
        model.train()
        for _ in range(steps):
            epoch, position = divmod(state["step"], steps_per_epoch)
            order = epoch_order(len(records), config.seed, epoch)
            indices = order[position * per_step : (position + 1) * per_step]
            batches = [pad_batch([encodings[i] for i in indices[j : j + config.batch_size]], pad_id)
                       for j in range(0, len(indices), config.batch_size)]
            losses.append(optimizer_step(model, optimizer, batches, config.max_grad_norm))
            state["step"] += 1
        model.eval()
    save_file(ckpt.moment_tensors(model, optimizer), str(folder / ckpt.OPTIMIZER_FILE))
    write_json(folder / STATE_FILE, {**state, "round": round_})
    reply.update(steps=steps, train_loss=sum(losses) / len(losses) if losses else math.nan)
    return Message(protocol.ADAPTER, reply, adapter_state(model))
