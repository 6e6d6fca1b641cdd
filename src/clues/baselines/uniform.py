"""``random``: seeded uniform scores, the floor every selector must beat.

A benchmark keeps, per silo, as many random records as CLUES kept (``--match-count`` semantics), so
random differs from CLUES only in *which* records it keeps. The scores depend on the seed and on
each record's position, never on its content, so they are the same on every machine.
"""

from __future__ import annotations

import torch


def random_scores(inputs, record_sets):
    generator = torch.Generator().manual_seed(int(inputs.seed))
    return {name: torch.rand(len(records), generator=generator, dtype=torch.float64) for name, records in record_sets.items()}
