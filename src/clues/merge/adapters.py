"""Merging the silos' LoRA adapters into one PEFT adapter (one round of model merging).

Each silo hands over a PEFT adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``)
trained from the same base model with the same rank and target modules. For every adapted module
the adapter holds two factors, ``A`` (r x in) and ``B`` (out x r), and the weight change it applies
is ``dW = scaling * B @ A`` with ``scaling = lora_alpha / r`` (``lora_alpha / sqrt(r)`` with rsLoRA).

Two spaces to merge in:

``factor``
    Merge all ``A`` factors with each other and all ``B`` factors with each other, exactly as PEFT's
    ``LoraModel.add_weighted_adapter`` does for ``linear``, ``ties``, ``dare_linear`` and
    ``dare_ties``; this reproduces the CLUES authors' setting. PEFT folds each silo's weight and
    scaling, ``c_i = w_i * scaling_i``, into the factors as square roots: ``A`` gets
    ``sign(c_i) * sqrt(|c_i|)`` and ``B`` gets ``sqrt(|c_i|)`` (the sign on one side only, so that it
    survives the product), and the merged adapter has ``lora_alpha = r``, i.e. scaling 1.

    This is *not* a merge of the weight changes: the product of sums is not the sum of products.
    For linear, ``(sum_i b_i B_i) @ (sum_j a_j A_j) = sum_i a_i b_i B_i A_i + sum_{i != j} a_j b_i B_i A_j``;
    the first part is the wanted weighted sum of ``dW_i`` (since ``a_i b_i = c_i``) but the cross terms
    ``B_i A_j`` pair one silo's output directions with another silo's input directions, a change no
    silo ever learned. Independently trained adapters have unrelated factor bases (``B Q, Q^-1 A``
    gives the same ``dW`` for any invertible ``Q``), so the cross terms are noise, not signal. TIES'
    trim and sign election on factors likewise act on coordinates with no fixed meaning.

``delta``
    Merge the real weight changes ``dW_i`` of each module (the TIES/DARE papers' task vectors), then
    turn the merged ``dW`` back into an adapter: a truncated SVD to rank ``delta_rank`` (default: the
    adapters' rank; exact when the merged ``dW`` has at most that rank), or ``"concat"`` for
    ``linear``: stack the silos' factors along the rank, ``B = [c_1 B_1 ... c_n B_n]``,
    ``A = [A_1; ...; A_n]``, whose product is exactly ``sum_i c_i B_i A_i`` at rank ``n * r``.

Like PEFT, merging a single adapter always uses ``linear`` (weight times the adapter): with one
silo there is no sign conflict to resolve, and trimming or dropping would only damage it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from clues.errors import CluesError
from clues.io import write_json
from clues.merge.ops import METHODS, combine

SPACES = ("factor", "delta")
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PROVENANCE_FILE = "clues_merge.json"

# Factor-key suffixes PEFT uses for LoRA on linear layers and on embeddings.
_PAIRS = (("lora_A.weight", "lora_B.weight"), ("lora_embedding_A", "lora_embedding_B"))

# Config options that change what the tensors mean; merging them is not supported.
_UNSUPPORTED = {
    "use_dora": "DoRA adapters",
    "rank_pattern": "per-module ranks (rank_pattern)",
    "alpha_pattern": "per-module alphas (alpha_pattern)",
    "lora_bias": "LoRA biases (lora_bias)",
    "modules_to_save": "fully trained modules (modules_to_save)",
    "target_parameters": "adapters on parameters (target_parameters)",
    "trainable_token_indices": "trainable tokens (trainable_token_indices)",
}


@dataclass
class LoraAdapter:
    """One PEFT LoRA adapter as read from its folder: the config dict and the tensors by key."""

    path: Path
    config: dict
    tensors: dict[str, torch.Tensor]

    @property
    def rank(self) -> int:
        return int(self.config["r"])

    @property
    def scaling(self) -> float:
        """The factor PEFT multiplies ``B @ A`` by in the forward pass."""
        alpha = float(self.config.get("lora_alpha", self.rank))
        return alpha / math.sqrt(self.rank) if self.config.get("use_rslora") else alpha / self.rank


def load_adapter(folder: str | os.PathLike) -> LoraAdapter:
    """Read a PEFT LoRA adapter folder; :class:`CluesError` if it is not one we can merge."""
    from clues.checkpoint import load_tensors

    folder = Path(folder)
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    if not config_path.is_file() or not weights_path.is_file():
        raise CluesError(f"{folder}: not a PEFT adapter folder (needs {CONFIG_FILE} and {WEIGHTS_FILE})")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CluesError(f"{config_path}: cannot read adapter config: {exc}") from exc
    if config.get("peft_type") != "LORA":
        raise CluesError(f"{config_path}: peft_type is {config.get('peft_type')!r}; only LORA adapters can be merged")
    for option, what in _UNSUPPORTED.items():
        if config.get(option):
            raise CluesError(f"{config_path}: merging {what} is not supported")
    tensors = load_tensors(weights_path, advice="replace this adapter folder (or delete it and rerun what wrote it)")
    adapter = LoraAdapter(folder, config, tensors)
    _module_pairs(adapter.tensors, folder)  # reject stray keys now, naming the folder
    return adapter


def _module_pairs(tensors: dict[str, torch.Tensor], where: object) -> dict[str, tuple[str, str]]:
    """Module prefix -> (A key, B key) for every adapted module; other keys raise :class:`CluesError`."""
    pairs, seen = {}, set()
    for key in tensors:
        for a_suffix, b_suffix in _PAIRS:
            if key.endswith(a_suffix):
                prefix = key[: -len(a_suffix)]
                b_key = prefix + b_suffix
                if b_key not in tensors:
                    raise CluesError(f"{where}: {key} has no matching {b_suffix}")
                pairs[prefix] = (key, b_key)
                seen.update((key, b_key))
    stray = sorted(set(tensors) - seen)
    if stray:
        raise CluesError(f"{where}: tensors other than LoRA factors cannot be merged: {', '.join(stray[:3])}")
    for prefix, (a_key, b_key) in pairs.items():
        if tensors[a_key].dim() != 2 or tensors[b_key].dim() != 2:
            raise CluesError(f"{where}: {prefix}: only 2-D LoRA factors (linear layers, embeddings) can be merged")
    return pairs


def _targets(config: dict):
    targets = config.get("target_modules")
    return sorted(targets) if isinstance(targets, (list, tuple, set)) else targets


def check_compatible(adapters: Sequence[LoraAdapter]) -> None:
    """All adapters must share base model, rank, target modules and tensor shapes, or be refused."""
    if not adapters:
        raise CluesError("no adapters to merge")
    first = adapters[0]

    def differs(name, value_of):
        values = {str(a.path): value_of(a) for a in adapters}
        if len({json.dumps(v, sort_keys=True, default=str) for v in values.values()}) > 1:
            listing = "; ".join(f"{path}: {value}" for path, value in values.items())
            raise CluesError(f"adapters to merge must share one {name}, found: {listing}")

    differs("base model", lambda a: a.config.get("base_model_name_or_path"))
    differs("LoRA rank r", lambda a: a.rank)
    differs("set of target modules", lambda a: _targets(a.config))
    expected = {key: tuple(t.shape) for key, t in first.tensors.items()}
    for adapter in adapters[1:]:
        shapes = {key: tuple(t.shape) for key, t in adapter.tensors.items()}
        if shapes != expected:
            odd = sorted(set(shapes.items()) ^ set(expected.items()))[0][0]
            raise CluesError(
                f"adapters {first.path} and {adapter.path} adapt different modules or shapes (first difference: {odd})"
            )


def svd_factors(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The best rank-``rank`` factors ``(A, B)`` with ``B @ A ~= delta`` (Eckart-Young).

    The singular values are split evenly (``sqrt(S)`` on each side) so both factors have the same
    scale, which keeps the adapter well conditioned for further training or merging. If ``rank``
    exceeds the matrix's smaller side the extra rows/columns are zero.
    """
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    k = min(rank, s.numel())
    root = s[:k].sqrt()
    a = delta.new_zeros(rank, delta.shape[1])
    b = delta.new_zeros(delta.shape[0], rank)
    a[:k] = root[:, None] * vh[:k]
    b[:, :k] = u[:, :k] * root
    return a, b


def merge_lora_state_dicts(
    states: Sequence[dict[str, torch.Tensor]],
    scalings: Sequence[float],
    method: str = "ties",
    space: str = "factor",
    weights: Sequence[float] | None = None,
    density: float = 0.2,
    seed: int = 0,
    delta_rank: int | str | None = None,
) -> tuple[dict[str, torch.Tensor], int]:
    """Merge LoRA state dicts (PEFT keys, same shapes) into one; return ``(tensors, rank)``.

    ``scalings[i]`` is adapter i's ``lora_alpha / r``. The result is meant for ``lora_alpha = rank``
    (scaling 1): its ``B @ A`` is the merged weight change itself. Modules are processed in sorted
    key order with one generator seeded ``seed``, so DARE's random drop is reproducible.
    """
    n = len(states)
    if n == 0:
        raise CluesError("no adapters to merge")
    weights = [1.0] * n if weights is None else [float(w) for w in weights]
    _check_options(n, method, space, weights, density, delta_rank)
    if n == 1:
        method = "linear"  # PEFT's rule, see the module docstring
    generator = torch.Generator().manual_seed(seed)
    first = states[0]
    prefixes = sorted(_module_pairs(first, "first adapter").items())
    if not prefixes:
        raise CluesError("the adapters hold no LoRA factors")
    if len(scalings) != n:
        raise CluesError(f"{len(scalings)} scalings given for {n} adapters")
    rank = first[prefixes[0][1][0]].shape[0]
    coeffs = [w * c for w, c in zip(weights, scalings)]  # what multiplies silo i's B @ A
    roots = [math.sqrt(abs(c)) for c in coeffs]  # factor space: sqrt(|c|) on B, signed on A
    signed_roots = [math.copysign(root, c) for root, c in zip(roots, coeffs)]
    merged: dict[str, torch.Tensor] = {}
    for _, (a_key, b_key) in prefixes:
        dtype = first[a_key].dtype
        As = [s[a_key].float() for s in states]
        Bs = [s[b_key].float() for s in states]
        if space == "factor":
            a = combine(As, signed_roots, method, density, generator)
            b = combine(Bs, roots, method, density, generator)
        elif delta_rank == "concat":
            a = torch.cat(As, dim=0)
            b = torch.cat([c * B for c, B in zip(coeffs, Bs)], dim=1)
        else:
            deltas = [c * (B @ A) for c, A, B in zip(scalings, As, Bs)]
            delta = combine(deltas, weights, method, density, generator)
            a, b = svd_factors(delta, delta_rank or rank)
        merged[a_key], merged[b_key] = a.to(dtype).contiguous(), b.to(dtype).contiguous()
    return merged, merged[prefixes[0][1][0]].shape[0]


def _check_options(n, method, space, weights, density, delta_rank) -> None:
    if method not in METHODS:
        raise CluesError(f"unknown merge method {method!r}; choose one of {', '.join(METHODS)}")
    if space not in SPACES:
        raise CluesError(f"unknown merge space {space!r}; choose one of {', '.join(SPACES)}")
    if len(weights) != n:
        raise CluesError(f"{len(weights)} merge weights given for {n} adapters")
    if not all(math.isfinite(w) for w in weights):
        raise CluesError(f"merge weights must be finite numbers, got {weights}")
    if method != "linear" and not 0.0 < density <= 1.0:
        raise CluesError(f"merge density must be in (0, 1], got {density}")
    if delta_rank is not None:
        if space != "delta":
            raise CluesError("delta_rank applies to the delta merge space only")
        if delta_rank == "concat":
            if method != "linear" and n > 1:
                raise CluesError(
                    f"delta_rank 'concat' is exact only for linear merging; {method} changes entries of the "
                    "weight change individually, so its result has full rank: give a rank for the SVD instead"
                )
        elif isinstance(delta_rank, bool) or not isinstance(delta_rank, int) or delta_rank < 1:
            raise CluesError(f"delta_rank must be a positive integer or 'concat', got {delta_rank!r}")


def merge_adapters(
    adapter_dirs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    method: str = "ties",
    space: str = "factor",
    weights: Sequence[float] | None = None,
    density: float = 0.2,
    seed: int = 0,
    delta_rank: int | str | None = None,
) -> Path:
    """Merge PEFT LoRA adapter folders into a new PEFT adapter folder ``out_dir``; return it.

    Defaults are the CLUES paper's: TIES in factor space (PEFT's ``add_weighted_adapter``), density
    0.2, weight 1.0 per silo. The folder is written to a temporary sibling and renamed into place,
    so it is either complete or absent; an existing ``out_dir`` is replaced. Besides the PEFT files
    it holds ``clues_merge.json`` saying how it was made.
    """
    adapters = [load_adapter(d) for d in adapter_dirs]
    check_compatible(adapters)
    tensors, rank = merge_lora_state_dicts(
        [a.tensors for a in adapters],
        [a.scaling for a in adapters],
        method=method,
        space=space,
        weights=weights,
        density=density,
        seed=seed,
        delta_rank=delta_rank,
    )
    config = dict(adapters[0].config)
    config.update(r=rank, lora_alpha=rank, use_rslora=False, rank_pattern={}, alpha_pattern={}, inference_mode=True)
    provenance = {
        "method": "linear" if len(adapters) == 1 else method,
        "space": space,
        "weights": [1.0] * len(adapters) if weights is None else [float(w) for w in weights],
        "density": density,
        "seed": seed,
        "delta_rank": delta_rank,
        "rank": rank,
        "sources": [str(a.path) for a in adapters],
    }

    def write(folder: Path) -> None:
        from safetensors.torch import save_file

        from clues.checkpoint import write_adapter_config

        save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
        write_adapter_config(folder, config)
        write_json(folder / PROVENANCE_FILE, provenance)

    return _write_folder_atomically(Path(out_dir), write)


def _write_folder_atomically(out_dir: Path, write) -> Path:
    """Fill a temporary sibling folder with ``write`` and rename it to ``out_dir``.

    A directory cannot be renamed over a non-empty one, so an existing ``out_dir`` is first moved
    aside and deleted after the swap: a reader sees the old folder or the new one, never a mix.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise CluesError(f"{out_dir} exists and is not a folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".tmp"))
    try:
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp's (and safetensors') private modes would hide the adapter
        write(tmp)
        for file in tmp.iterdir():
            file.chmod(0o666 & ~umask)
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".old"))
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
