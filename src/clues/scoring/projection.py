"""A seeded Rademacher random projection, applied identically to both sides of the inner product.

With ``R`` a ``D x k`` matrix of entries +-1/sqrt(k), the projected score of a record is
``<R^T G, R^T g_val> = <G, R R^T g_val>``. So instead of projecting every per-record gradient, the
engine projects the validation direction once per checkpoint into ``u = R R^T g_val`` and streams
``<G, u>``: the same number, without a ``k``-wide product per record. ``R`` is defined row by row
(chunks of :data:`ROWS_PER_CHUNK` rows, each from its own seeded generator), so it can be
regenerated chunk by chunk and never needs to be held whole.
"""

from __future__ import annotations

import hashlib

import torch

ROWS_PER_CHUNK = 2048


def _chunk_generator(seed: int, chunk: int) -> torch.Generator:
    digest = hashlib.sha256(f"clues-rademacher:{seed}:{chunk}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def rademacher_rows(seed: int, start: int, stop: int, dim: int) -> torch.Tensor:
    """Rows ``start:stop`` of the projection matrix (``float64``, entries +-1/sqrt(dim))."""
    parts = []
    first, last = start // ROWS_PER_CHUNK, (stop - 1) // ROWS_PER_CHUNK
    for chunk in range(first, last + 1):
        signs = torch.randint(0, 2, (ROWS_PER_CHUNK, dim), generator=_chunk_generator(seed, chunk), dtype=torch.int8)
        lo = max(start - chunk * ROWS_PER_CHUNK, 0)
        hi = min(stop - chunk * ROWS_PER_CHUNK, ROWS_PER_CHUNK)
        parts.append(signs[lo:hi].to(torch.float64))
    rows = torch.cat(parts) if len(parts) > 1 else parts[0]
    return (rows * 2 - 1) / dim**0.5


def rademacher_matrix(rows: int, dim: int, seed: int) -> torch.Tensor:
    """The whole ``rows x dim`` matrix (for tests and small problems)."""
    return rademacher_rows(seed, 0, rows, dim)


def project(vector: torch.Tensor, dim: int, seed: int) -> torch.Tensor:
    """``R^T vector`` for a flat ``[D]`` (or ``[batch, D]``) vector, chunk by chunk."""
    vector = vector.to(torch.float64)
    total = vector.shape[-1]
    out = torch.zeros(vector.shape[:-1] + (dim,), dtype=torch.float64)
    for start in range(0, total, ROWS_PER_CHUNK):
        stop = min(start + ROWS_PER_CHUNK, total)
        out += vector[..., start:stop] @ rademacher_rows(seed, start, stop, dim)
    return out


def project_back(projected: torch.Tensor, total: int, seed: int) -> torch.Tensor:
    """``R @ projected``: the ``[D]`` vector whose plain inner product equals the projected one."""
    dim = projected.shape[-1]
    out = torch.empty(total, dtype=torch.float64)
    for start in range(0, total, ROWS_PER_CHUNK):
        stop = min(start + ROWS_PER_CHUNK, total)
        out[start:stop] = rademacher_rows(seed, start, stop, dim) @ projected.to(torch.float64)
    return out


def projected_direction(direction: torch.Tensor, dim: int, seed: int) -> torch.Tensor:
    """``u = R R^T direction``, so that ``<G, u> == <R^T G, R^T direction>`` for every G."""
    return project_back(project(direction, dim, seed), direction.numel(), seed)
