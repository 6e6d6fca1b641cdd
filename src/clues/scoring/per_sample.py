"""Per-record gradients of LoRA weights for a whole padded batch, from one forward and one backward.

Why hooks and not ``torch.func.vmap(grad(...))``: a LoRA weight only enters the model through
``y = B(A(x))``, so the gradient of record b is a sum over its tokens of outer products,

    dL_b/dB = sum_t  dy_bt (x) h_bt        dL_b/dA = sum_t  (B^T dy_bt) (x) x_bt

with ``h = A(x)``. Forward hooks on the ``lora_A`` / ``lora_B`` linears keep ``x`` and ``h``; one
``torch.autograd.grad`` of the *sum* of the per-record losses gives ``dy`` for every record at once
(records in a batch never interact: right padding, causal attention, per-record loss), and two
batched matmuls per layer turn them into per-record gradients. The cost is one ordinary
forward+backward (minus the weight gradients) plus O(batch x tokens x rank x width) per LoRA layer.
``torch.func.vmap(grad(loss))`` gives the same numbers (to float rounding) but was no faster on this
CPU (hooks 1.04-1.09x vmap on per-record gradients alone, ``benchmarks/scoring.py``), cannot run the
project's :func:`per_record_loss` unchanged (its "no response token" check is data-dependent control
flow, which vmap refuses), and materialises every chosen block at once where hooks yield them one
by one.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch

from clues.errors import CluesError
from clues.loss import batch_record_losses
from clues.scoring.params import LoraBlock


@contextmanager
def _capture(layers: Sequence[tuple[torch.nn.Linear, torch.nn.Linear]]):
    """Record the input of every ``lora_A`` and the input/output of every ``lora_B`` during a forward."""
    seen: dict[int, dict[str, torch.Tensor]] = {i: {} for i in range(len(layers))}
    handles = []

    def keep(index: int, role: str):
        def hook(module, inputs, output):
            store = seen[index]
            if role in store:
                raise CluesError("a LoRA layer ran twice in one forward pass; per-record gradients would be wrong")
            if role == "A":
                store["x"] = inputs[0]
            else:
                store["h"] = inputs[0]
                store["y"] = output

        return hook

    try:
        for index, (lora_A, lora_B) in enumerate(layers):
            handles.append(lora_A.register_forward_hook(keep(index, "A")))
            handles.append(lora_B.register_forward_hook(keep(index, "B")))
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def per_record_gradients(
    model, batch: dict[str, torch.Tensor], blocks: Sequence[LoraBlock]
) -> Iterator[tuple[LoraBlock, torch.Tensor]]:
    """Yield ``(block, grads)`` with ``grads[b]`` the gradient of record b's loss w.r.t. ``block.param``.

    ``batch`` is a padded batch from :func:`clues.data.batching.pad_batch`; the loss is
    :func:`clues.loss.batch_record_losses` (mean over each record's response tokens; from the
    cached frozen prefix when the batch carries one). Blocks are yielded
    one at a time so that only one ``[batch, *param.shape]`` tensor lives at once.
    The model must be in eval mode: LoRA dropout would make the gradient random.
    """
    if model.training:
        raise CluesError("per-record gradients need the model in eval mode (LoRA dropout off)")
    layers: list[tuple[torch.nn.Linear, torch.nn.Linear]] = []
    index_of: dict[int, int] = {}
    for block in blocks:
        key = id(block.lora_B)
        if key not in index_of:
            index_of[key] = len(layers)
            layers.append((block.lora_A, block.lora_B))
    with torch.enable_grad(), _capture(layers) as seen:
        losses = batch_record_losses(model, batch)
        outputs = []
        for i in range(len(layers)):
            if "y" not in seen[i] or "x" not in seen[i]:
                raise CluesError("a selected LoRA layer did not run in the forward pass (adapter disabled or merged?)")
            if not seen[i]["y"].requires_grad:
                raise CluesError("LoRA outputs carry no gradient; the LoRA parameters must require grad")
            outputs.append(seen[i]["y"])
        grads_y = torch.autograd.grad(losses.sum(), outputs)
    for block in blocks:
        i = index_of[id(block.lora_B)]
        dy = grads_y[i].float()
        if block.kind == "B":
            grad = torch.einsum("bto,btr->bor", dy, seen[i]["h"].detach().float())
        else:
            dh = dy @ block.lora_B.weight.detach().float()
            grad = torch.einsum("btr,bti->bri", dh, seen[i]["x"].detach().float())
        yield block, grad
