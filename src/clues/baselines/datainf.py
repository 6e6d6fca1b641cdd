"""``datainf``: DataInf's closed-form influence of a record on the validation loss (Kwon et al. 2024).

The influence function ``I(z) = -v^T (H + lambda I)^-1 g(z)`` needs an inverse Hessian. DataInf
replaces the Hessian of each LoRA layer ``l`` by the damped empirical Fisher of the training records
and swaps inverse and mean (their eq. 5), which the Sherman-Morrison formula makes closed-form:

    (1/n sum_i g_il g_il^T + lambda_l I)^-1  ~  1/(n lambda_l) sum_i ( I - g_il g_il^T / (lambda_l + ||g_il||^2) )

so ``r_l = (G_l + lambda_l I)^-1 v_l`` becomes

    r_l = 1/(n lambda_l) sum_i ( v_l - (v_l^T g_il) / (lambda_l + ||g_il||^2) * g_il ),

with the paper's damping ``lambda_l = 0.1 * 1/(n d_l) sum_i ||g_il||^2`` (one per layer, ``d_l`` its size).
The influence is ``I(z) = -sum_l r_l^T g_l(z)`` (positive = harmful), so the score, higher = keep, is
``-I(z) = sum_l r_l^T g_l(z)``.

Everything runs on the warm-up run's last checkpoint with plain gradients (DataInf has no optimizer
state); ``v`` is the domain-weighted mean validation gradient that CLUES uses. The ``r_l`` are built
from the silo's own records (``"data"``) only; anchors are scored against the same ``r_l``.
The computation streams in three passes over the data (scalars, then ``sum_i c_il g_il``, then the
scores), so memory is ``dim`` floats per vector, never records x dim.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from clues.data.records import Record
from clues.errors import CluesError
from clues.scoring.engine import open_run, validation_weights

# DataInf's damping: a tenth of the mean squared gradient entry of the layer (Kwon et al. 2024, section 3).
DAMPING_SCALE = 0.1


def _layer_sums(G: torch.Tensor, layers: list[list[slice]], fn) -> torch.Tensor:
    """``[batch, layers]``: ``sum over the layer's slices of fn(G[:, slice], slice)``."""
    return torch.stack([sum(fn(G[:, s], s) for s in spans) for spans in layers], dim=1)


def datainf_scores(inputs, record_sets: Mapping[str, Sequence[Record]]) -> dict[str, torch.Tensor]:
    data = record_sets["data"]
    if not data:
        raise CluesError("datainf builds its Hessian approximation from the silo's records, and there are none")
    run = open_run(inputs.warmup_run("datainf"), record_sets, inputs.validation, inputs.settings, inputs.base_model,
                   inputs.console, method="datainf", last_only=True)
    scorer, data_enc = run.scorer, run.sets["data"]
    settings = inputs.settings
    domains = settings.domains
    if domains is None:  # the silo's own domains, as in score_run
        domains = sorted({r.domain for r in data if r.domain})
    weights = validation_weights(inputs.validation, domains, settings.w_other)
    device = scorer.blocks[0].param.device
    v = scorer.validation_gradient(run.validation, weights).to(device)
    layers = list(scorer.layer_slices().values())
    sizes = torch.tensor([sum(s.stop - s.start for s in spans) for spans in layers], dtype=torch.float64, device=device)
    n = len(data_enc)

    # Pass 1: per record and layer, ||g_il||^2 and v_l^T g_il.
    sq = torch.zeros(n, len(layers), dtype=torch.float64, device=device)
    dots = torch.zeros_like(sq)
    for indices, G in scorer.gradient_batches(data_enc, "none"):
        sq[indices] = _layer_sums(G, layers, lambda g, s: (g * g).sum(dim=1))
        dots[indices] = _layer_sums(G, layers, lambda g, s: g @ v[s])

    damping = DAMPING_SCALE * sq.sum(dim=0) / (n * sizes)
    usable = damping > 0  # a layer whose gradients all vanish carries no curvature and gets r_l = 0
    coeff = torch.where(usable, dots / (damping + sq).clamp(min=torch.finfo(torch.float64).tiny), torch.zeros_like(dots))

    # Pass 2: sum_i c_il g_il, one flat vector laid out like the gradients.
    acc = torch.zeros_like(v)
    for indices, G in scorer.gradient_batches(data_enc, "none"):
        c = coeff[indices]
        for l, spans in enumerate(layers):
            for s in spans:
                acc[s] += c[:, l] @ G[:, s]

    # r_l = (n v_l - sum_i c_il g_il) / (n lambda_l)
    r = torch.zeros_like(v)
    for l, spans in enumerate(layers):
        if usable[l]:
            for s in spans:
                r[s] = (n * v[s] - acc[s]) / (n * damping[l])

    # Pass 3: score = -I(z) = sum_l r_l^T g_l(z) = r^T g(z) over the flat vector.
    out = {}
    for name, encs in run.sets.items():
        scores = torch.zeros(len(encs), dtype=torch.float64)
        for indices, G in scorer.gradient_batches(encs, "none"):
            scores[indices] = (G @ r).cpu()
        out[name] = scores
    return out
