"""Tensor math of model merging: TIES, task arithmetic and DARE, on one stack of task tensors.

Every function here sees the same thing: a list of same-shaped "task tensors" (one per silo: a LoRA
factor, or a module's weight change) and one weight per tensor, and returns one merged tensor.
Whether those tensors are LoRA factors or real weight changes is the caller's business
(:mod:`clues.merge.adapters`); the math does not care.

Written from the papers' definitions:

- Task arithmetic (Ilharco et al., 2023): the merged task vector is the weighted sum ``sum_i w_i t_i``.
- TIES (Yadav et al., 2023, Algorithm 1): *trim* each task vector to its top ``density`` fraction of
  entries by magnitude; *elect* for every entry the sign of the sum of the trimmed values; take the
  *disjoint mean*: average only the entries whose sign agrees with the elected one (entries nobody
  kept stay 0). Averaging instead of summing keeps an entry's size when several silos agree on it,
  and dropping the disagreeing entries keeps one silo's large update from being cancelled by
  another's opposite one.
- DARE (Yu et al., 2024): *drop* each entry independently with probability ``1 - density`` and
  *rescale* the survivors by ``1 / density``, so the expected value of every entry is unchanged; then
  merge linearly (``dare_linear``) or with TIES' elect + disjoint mean (``dare_ties``).

Where the papers leave a choice open we follow PEFT's ``add_weighted_adapter`` (the authors' tool),
so that factor-space merges reproduce it exactly:

- the trim keeps exactly ``int(density * numel)`` entries per tensor (whole tensor, not per row), and
  ``density >= 1`` keeps everything;
- the sign is elected on the *unweighted* trimmed values (as in the TIES paper, which has no per-task
  weights), and a tie (sum exactly 0) elects ``+``; the weights enter only in the disjoint mean,
  ``sum_{i agrees} w_i t_i / #agreeing``. With the paper's weights of 1.0 this is the plain TIES mean.
"""

from __future__ import annotations

from typing import Sequence

import torch

METHODS = ("ties", "linear", "dare_ties", "dare_linear")


def trim_top(tensor: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the ``int(density * numel)`` largest-magnitude entries of ``tensor``, zero the rest."""
    if density >= 1.0:
        return tensor
    flat = tensor.reshape(-1)
    keep = torch.zeros_like(flat, dtype=torch.bool)
    k = int(density * flat.numel())
    if k > 0:
        keep[flat.abs().topk(k).indices] = True
    return (flat * keep).reshape(tensor.shape)


def dare_drop(tensor: torch.Tensor, density: float, generator: torch.Generator) -> torch.Tensor:
    """Drop each entry with probability ``1 - density`` and divide survivors by ``density``.

    The rescale makes the result unbiased: ``E[dare_drop(t)] = t`` entry by entry.
    """
    if density >= 1.0:
        return tensor
    keep = torch.bernoulli(torch.full_like(tensor, density), generator=generator)
    return tensor * keep / density


def elect_sign(stacked: torch.Tensor) -> torch.Tensor:
    """For every entry, the sign (+1/-1) of the sum over tasks (dim 0); a zero sum elects +1."""
    return torch.where(stacked.sum(dim=0) >= 0, 1.0, -1.0).to(stacked.dtype)


def disjoint_mean(stacked: torch.Tensor, weights: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """Weighted mean over the tasks whose entry has the elected sign (zeros never agree)."""
    agrees = stacked.sign() == sign
    w = weights.reshape((-1,) + (1,) * (stacked.dim() - 1))
    total = (stacked * w * agrees).sum(dim=0)
    count = agrees.sum(dim=0).clamp(min=1)
    return total / count


def weighted_sum(stacked: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Task arithmetic: ``sum_i w_i t_i``."""
    w = weights.reshape((-1,) + (1,) * (stacked.dim() - 1))
    return (stacked * w).sum(dim=0)


def combine(
    tensors: Sequence[torch.Tensor],
    weights: Sequence[float] | torch.Tensor,
    method: str = "ties",
    density: float = 0.2,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Merge same-shaped task tensors with ``method`` (one of :data:`METHODS`).

    ``density`` is the kept fraction for the TIES trim and the DARE drop (ignored by ``linear``);
    ``generator`` drives DARE's random drop (a fresh one seeded 0 when omitted).
    """
    if method not in METHODS:
        raise ValueError(f"unknown merge method {method!r}; choose one of {', '.join(METHODS)}")
    weights = torch.as_tensor(weights, dtype=tensors[0].dtype)
    if method == "linear":
        return weighted_sum(torch.stack(list(tensors)), weights)
    if method.startswith("dare"):
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        stacked = torch.stack([dare_drop(t, density, generator) for t in tensors])
        if method == "dare_linear":
            return weighted_sum(stacked, weights)
    else:
        stacked = torch.stack([trim_top(t, density) for t in tensors])
    return disjoint_mean(stacked, weights, elect_sign(stacked))
