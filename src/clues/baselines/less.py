"""``less``: LESS's gradient-similarity selection (Xia et al. 2024), exact (no random projection).

LESS scores a training record by how well its optimizer-preconditioned gradient aligns with the
gradients of each target task's validation examples, summed over the warm-up checkpoints with the
learning rate as weight, then keeps the best task (their eq. 2 and section 4.2):

    score_d(z) = sum_c eta_c * mean_{v in d} cos(Gamma_c(z), g_c(v)),      score(z) = max_d score_d(z)

``Gamma_c`` is the Adam direction of the checkpoint (``settings.precondition``, default ``"adam"``),
``g_c(v)`` the plain gradient of validation record ``v``. Cosines use unit vectors, so
``mean_v cos(Gamma, g_v) = <Gamma, u_d> / ||Gamma||`` with ``u_d`` the mean of the unit validation
gradients of domain ``d``: one direction per domain and checkpoint, and every record's score streams
out of one pass over its gradients. Validation records without a domain form one group; a zero
gradient (record or validation) has cosine 0.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from clues.data.records import Record
from clues.scoring.engine import checkpoint_state, open_run


def _unit_rows(G: torch.Tensor) -> torch.Tensor:
    """Each row divided by its length; zero rows stay zero."""
    norms = G.norm(dim=1, keepdim=True)
    return torch.where(norms > 0, G / norms.clamp(min=torch.finfo(G.dtype).tiny), torch.zeros_like(G))


def less_scores(inputs, record_sets: Mapping[str, Sequence[Record]]) -> dict[str, torch.Tensor]:
    run = open_run(inputs.warmup_run("less"), record_sets, inputs.validation, inputs.settings, inputs.base_model,
                   inputs.console, method="less")
    scorer, kind = run.scorer, inputs.settings.precondition
    domains = sorted({r.domain for r in inputs.validation}, key=lambda d: (d is None, d or ""))
    group = torch.tensor([domains.index(r.domain) for r in inputs.validation])
    device = scorer.blocks[0].param.device
    per_domain = {name: torch.zeros(len(encs), len(domains), dtype=torch.float64) for name, encs in run.sets.items()}

    for path in run.checkpoints:
        eta, moments, hyper = checkpoint_state(scorer, path, run.base, kind, who="less with ")

        # u_d,c: mean of the unit plain gradients of domain d's validation records, [domains, dim].
        U = torch.zeros(len(domains), scorer.dim, dtype=torch.float64, device=device)
        for indices, G in scorer.gradient_batches(run.validation, "none"):
            U.index_add_(0, group[indices].to(device), _unit_rows(G))
        U /= torch.bincount(group, minlength=len(domains)).to(device, torch.float64).unsqueeze(1)

        for name, encs in run.sets.items():
            for indices, G in scorer.gradient_batches(encs, kind, moments, hyper):
                per_domain[name][indices] += eta * (_unit_rows(G) @ U.T).cpu()

    # LESS sums over checkpoints first, then keeps the best-aligned target task.
    return {name: scores.max(dim=1).values for name, scores in per_domain.items()}
