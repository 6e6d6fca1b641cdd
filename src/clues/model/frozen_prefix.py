"""Run only what changes: response-only logits and a cached frozen prefix of the decoder.

Two exact shortcuts for the per-record loss, which training, scoring and evaluation all compute:

- **Response-only logits.** The loss reads the logits only where the next token is a response
  token. The LM head is the largest matrix of a small model (SmolLM2-135M: 49,152 x 576, a fifth of
  its weights), so it is applied to those positions alone instead of to every position.
- **A cached frozen prefix.** When LoRA adapts only the top layers of the decoder (``lora_layers``),
  every layer below the first adapted one is frozen: its output for a record never changes, not
  across training steps, epochs, checkpoints or conditions. :func:`fill_prefix` runs that part once
  per record and keeps the hidden state entering the first adapted layer in the record's encoding
  (in memory, inside the silo); :func:`record_losses` then runs only the adapted layers on it.

Both give the same losses and gradients as the plain forward up to float32 rounding (the tests
compare them), because they compute the same functions: right padding keeps every token at its
position, so the cached hidden state of a record is the one the full forward would produce.
They cover decoders whose logits are ``lm_head(final hidden state)`` and whose layers take the
previous layer's hidden state as they are (the Llama family); any other model runs the plain
forward, and asking it for a prefix cache is an error.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from contextlib import contextmanager
from typing import Sequence

import torch

from clues.errors import CluesError
from clues.loss import response_losses

# Logits are lm_head(last hidden state): no scaling or soft-capping after the decoder.
HEAD_ONLY_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gpt2")
# Additionally, the decoder is `layers` + `norm` and uses its inputs_embeds unchanged (no scaling,
# no learned positions added), so a cached hidden state can be fed back as inputs_embeds.
PREFIX_TYPES = ("llama", "mistral", "qwen2", "qwen3")

_LAYER = re.compile(r"\.layers\.(\d+)\.")


def _hf_model(model):
    """The transformers model under a PEFT wrapper (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _parts(model):
    """``(decoder, lm_head, model_type)`` of a causal LM whose logits are ``lm_head(decoder(...))``, else ``None``."""
    hf = _hf_model(model)
    model_type = getattr(hf.config, "model_type", None)
    if model_type not in HEAD_ONLY_TYPES:
        return None
    decoder = getattr(hf, hf.base_model_prefix, None)
    head = hf.get_output_embeddings()
    if decoder is None or head is None:
        return None
    return decoder, head, model_type


def first_adapted_layer(model) -> int | None:
    """Index of the lowest decoder layer holding a LoRA or (in a PEFT model) trainable parameter.

    LoRA weights count even when they do not require grad (scoring a subset of blocks): a
    checkpoint changes them. A plain model has no adapted layer, whatever its ``requires_grad``
    flags say (they are all on after loading, and nothing trains it). ``None`` when there is none;
    0 when one lies outside the decoder layers (embeddings, LM head): then no prefix is frozen.
    """
    peft = hasattr(model, "peft_config")
    lowest = None
    for name, param in model.named_parameters():
        if not ("lora_" in name or (peft and param.requires_grad)):
            continue
        match = _LAYER.search(name)
        if match is None:
            return 0
        index = int(match.group(1))
        lowest = index if lowest is None else min(lowest, index)
    return lowest


def prefix_layer(model) -> int:
    """How many bottom layers of this model are frozen and can be cached (0: none; every layer for
    a model without adapter)."""
    parts = _parts(model)
    if parts is None or parts[2] not in PREFIX_TYPES:
        return 0
    if model.training and getattr(_hf_model(model).config, "attention_dropout", 0.0):
        return 0  # a frozen layer with dropout is random while training: nothing to cache
    start = first_adapted_layer(model)
    return len(parts[0].layers) if start is None else start


def shared_prefix(model, config) -> int | None:
    """The layer whose input every condition of a run can share in evaluation: the first one its
    LoRA adapts (``config.lora_layers`` from the top), or None when LoRA adapts every layer or the
    cache is off (``config`` is the run's :class:`clues.config.TrainConfig`)."""
    parts = _parts(model)
    if not config.cache_frozen or config.lora_layers is None or parts is None:
        return None
    return max(0, len(parts[0].layers) - config.lora_layers) or None


@contextmanager
def _layers(decoder, start: int, stop: int | None):
    """Let ``decoder`` run only its layers ``start:stop`` (then restore all of them)."""
    everything = decoder.layers
    decoder.layers = torch.nn.ModuleList(list(everything)[start:stop])
    try:
        yield
    finally:
        decoder.layers = everything


def _prefix_states(model, batch: dict, start: int) -> torch.Tensor:
    """The hidden states entering layer ``start`` for a padded batch: ``[batch, seq, hidden]``, no grad."""
    decoder, _, _ = _parts(model)
    device = next(model.parameters()).device
    kept = {}
    # With only the bottom layers left, the final norm's input is the output of layer start-1.
    handle = decoder.norm.register_forward_pre_hook(lambda module, args: kept.setdefault("h", args[0]))
    try:
        with torch.no_grad(), _layers(decoder, 0, start):
            decoder(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                    use_cache=False)
    finally:
        handle.remove()
    return kept["h"].detach()


class _StateCache:
    """Hidden states by (base model, layer, token ids), kept for the life of the process.

    A silo runs the same records through several stages (the warm-up run, scoring, the retraining
    of each condition), each loading the model afresh; the frozen part's output is the same in all
    of them, so it is computed once. Bounded by ``limit_bytes`` (oldest out first). It lives in the
    process that holds the records (the silo's), and nothing in it is ever sent anywhere.
    """

    def __init__(self, limit_bytes: int = 2 << 30):
        self.limit_bytes = limit_bytes
        self.states: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self.bytes = 0

    def get(self, key: tuple) -> torch.Tensor | None:
        state = self.states.get(key)
        if state is not None:
            self.states.move_to_end(key)
        return state

    def put(self, key: tuple, state: torch.Tensor) -> None:
        if key in self.states:
            return
        self.states[key] = state
        self.bytes += state.numel() * state.element_size()
        while self.bytes > self.limit_bytes and self.states:
            _, old = self.states.popitem(last=False)
            self.bytes -= old.numel() * old.element_size()

    def clear(self) -> None:
        self.states.clear()
        self.bytes = 0


STATES = _StateCache()


def _model_key(model, start: int) -> tuple:
    """What the frozen part's output depends on: its weights (a checksum of about 4,096 evenly spread
    entries of every frozen tensor, so two models loaded from one folder share states and two
    different ones do not; summing all 100M weights would cost seconds per call), the layer, the dtype."""
    decoder, _, _ = _parts(model)
    frozen = [decoder.embed_tokens.weight] + [p for layer in list(decoder.layers)[:start] for p in layer.parameters()]
    with torch.no_grad():
        checksum = tuple(
            round(float(flat[:: max(1, flat.numel() // 4096)].sum(dtype=torch.float64)), 9)
            for flat in (p.detach().reshape(-1) for p in frozen)
        )
    return (hash(checksum), start, str(frozen[0].dtype))


def fill_prefix(model, encodings: Sequence[dict], pad_token_id: int, batch_size: int = 8, start: int | None = None) -> int:
    """Store in each encoding (``"prefix"``: ``[tokens, hidden]`` float32 on the CPU) the hidden state
    entering the model's first adapted layer (or layer ``start``, at most that one: evaluation gives
    the base model and the adapted ones one layer, so they share the states); return the layer's
    index (0: nothing cached).

    Encodings that already hold a prefix for the same layer are skipped, and states computed for
    the same tokens by an earlier stage of this process are reused, so the frozen part runs once
    per record however many epochs, checkpoints, record sets or stages use it.
    """
    from clues.data.batching import length_sorted_batches, pad_batch

    frozen = prefix_layer(model)
    start = frozen if start is None else min(start, frozen)
    if start == 0 or start == len(_parts(model)[0].layers):  # nothing frozen, or nothing adapted: no reuse
        return 0
    model_key = _model_key(model, start)
    todo = []
    for i, e in enumerate(encodings):
        if e.get("prefix_layer") == start:
            continue
        known = STATES.get((*model_key, tuple(e["input_ids"])))
        if known is None:
            todo.append(i)
        else:
            e["prefix"], e["prefix_layer"] = known, start
    lengths = [len(encodings[i]["input_ids"]) for i in todo]
    for group in length_sorted_batches(lengths, batch_size):
        indices = [todo[g] for g in group]
        batch = pad_batch([_plain(encodings[i]) for i in indices], pad_token_id)
        states = _prefix_states(model, batch, start).float().cpu()
        for row, i in enumerate(indices):
            n = len(encodings[i]["input_ids"])
            encodings[i]["prefix"] = states[row, :n].clone()
            encodings[i]["prefix_layer"] = start
            STATES.put((*model_key, tuple(encodings[i]["input_ids"])), encodings[i]["prefix"])
    return start


def _plain(encoding: dict) -> dict:
    return {k: encoding[k] for k in ("input_ids", "labels")}


def record_losses(model, batch: dict, reduction: str = "mean") -> torch.Tensor:
    """Per-record losses ``[batch]`` of a padded batch (from :func:`clues.data.batching.pad_batch`),
    reduced over each record's response tokens as ``reduction`` says (:data:`clues.loss.REDUCTIONS`).

    Uses the cached prefix when the batch carries one, and response-only logits whenever the model
    allows; otherwise the plain forward. Equal to ``per_record_loss(model(...).logits, labels)``.
    """
    from clues.loss import per_record_loss

    device = next(model.parameters()).device
    mask = batch["attention_mask"].to(device)
    labels = batch["labels"].to(device)
    parts = _parts(model)
    if parts is None:
        if "prefix" in batch:
            raise CluesError("this model type cannot run from a cached prefix")
        logits = model(input_ids=batch["input_ids"].to(device), attention_mask=mask, use_cache=False).logits
        return per_record_loss(logits, labels, reduction)
    decoder, head, _ = parts
    if "prefix" in batch:
        start = batch["prefix_layer"]
        frozen = prefix_layer(model)
        if start > frozen:
            raise CluesError(f"cached hidden states enter layer {start}, but this model adapts layer "
                             f"{frozen}; the cache belongs to another LoRA layout")
        with _layers(decoder, start, None):
            hidden = decoder(inputs_embeds=batch["prefix"].to(device, head.weight.dtype), attention_mask=mask,
                             use_cache=False).last_hidden_state
    else:
        hidden = decoder(input_ids=batch["input_ids"].to(device), attention_mask=mask, use_cache=False).last_hidden_state
    return response_losses(hidden, head, labels, reduction)
