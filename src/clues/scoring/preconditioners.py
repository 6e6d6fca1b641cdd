"""How a raw per-record gradient becomes the direction G(z) that is dotted with the validation gradient.

``adam`` (the default, as in LESS and CLUES) asks "which way would Adam move if this record were the
next step?": with the checkpoint's moments m and v,

    m' = b1*m + (1-b1)*g,   v' = b2*v + (1-b2)*g^2,   G = m' / sqrt(v' + eps)

``none`` is the plain gradient (TracIn); ``sqrtv`` is the linear diagonal form ``g / (sqrt(v) + eps)``.
All work elementwise on ``[batch, *param.shape]`` tensors, so they apply to one LoRA block at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from clues.config import PRECONDITIONERS, check_kind  # noqa: F401 (PRECONDITIONERS: re-exported)
from clues.errors import CluesError


@dataclass(frozen=True)
class AdamHyper:
    """AdamW's defaults, the values CLUES.md states."""

    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8


def needs_moments(kind: str) -> bool:
    """``adam`` needs m and v, ``sqrtv`` needs v, ``none`` needs nothing."""
    check_kind(kind)
    return kind != "none"


def precondition(
    kind: str,
    grads: torch.Tensor,
    exp_avg: torch.Tensor | None = None,
    exp_avg_sq: torch.Tensor | None = None,
    hyper: AdamHyper = AdamHyper(),
) -> torch.Tensor:
    """``G`` for a batch of per-record gradients ``grads`` (``[batch, ...]``; moments ``[...]``)."""
    check_kind(kind)
    if kind == "none":
        return grads
    if exp_avg_sq is None or (kind == "adam" and exp_avg is None):
        raise CluesError(f"preconditioner {kind!r} needs the optimizer moments of the checkpoint")
    v = exp_avg_sq.to(grads.dtype).unsqueeze(0)
    if kind == "sqrtv":
        return grads / (v.sqrt() + hyper.eps)
    m = exp_avg.to(grads.dtype).unsqueeze(0)
    m_next = hyper.beta1 * m + (1 - hyper.beta1) * grads
    v_next = hyper.beta2 * v + (1 - hyper.beta2) * grads.square()
    return m_next / (v_next + hyper.eps).sqrt()
