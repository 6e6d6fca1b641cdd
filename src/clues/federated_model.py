"""The one LoRA model a federated process works on, and the adapter tensors that travel.

In federated mode the global adapter arrives with every request, so a silo (and the server) keeps
one base model with one LoRA adapter per process and overwrites the adapter's weights from the
message: loading the base model for every round would cost more than the round itself on a CPU.
The cache key is everything that shapes the model (base model, LoRA settings, dtype, device), so
two runs with other settings never share a model.

Adapter tensors travel under PEFT's file names (``get_peft_model_state_dict``), exactly what
``adapter_model.safetensors`` holds, so the final global adapter is a normal PEFT adapter.
"""

from __future__ import annotations

import torch

_MODELS: dict[tuple, tuple] = {}


def _key(config) -> tuple:
    lora = config.lora_settings()
    return (config.model, lora.r, lora.alpha, lora.dropout, lora.target_modules, config.dtype, config.device)


def _build(config):
    from clues.model import attach_lora, load_model
    from clues.train import DTYPES

    model, tokenizer = load_model(config.model, dtype=DTYPES[config.dtype], device=config.device)
    return attach_lora(model, config.lora_settings()), tokenizer


def lora_model(config):
    """``(peft_model, tokenizer)`` for a :class:`~clues.config.TrainConfig`, built once per process."""
    key = _key(config)
    if key not in _MODELS:
        _MODELS[key] = _build(config)
    return _MODELS[key]


def initial_adapter(config) -> dict[str, torch.Tensor]:
    """A fresh LoRA initialisation seeded with ``config.seed``: the round-0 global adapter of every condition."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model, _ = _build(config)
        return adapter_state(model)


def adapter_state(model) -> dict[str, torch.Tensor]:
    """The adapter's tensors under PEFT's file names, detached float32 copies on the CPU."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in get_peft_model_state_dict(model).items()}
