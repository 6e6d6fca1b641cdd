"""Which LoRA parameters a score is computed over.

The authors' scripts chose layers with ``x == 'a' or 'b'`` conditions, which are always true, so every
choice silently fell back to all parameters (CLUES.md section 6). Here a choice either selects a
non-empty set of LoRA weights or raises :class:`CluesError` naming what exists.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from clues.errors import CluesError

KEYWORDS = ("all", "q", "v", "lora_A", "lora_B", "first-layer", "last-layer")
# Module names that count as the query / value projection in the architectures we support.
_QUERY = ("q_proj", "query")
_VALUE = ("v_proj", "value")
_LAYER_INDEX = re.compile(r"\.(?:layers|h|layer|blocks)\.(\d+)\.")


@dataclass(frozen=True)
class LoraBlock:
    """One LoRA weight matrix: ``kind`` is ``"A"`` (``[r, in]``) or ``"B"`` (``[out, r]``).

    ``lora_A`` and ``lora_B`` are the two ``nn.Linear`` modules of the same LoRA layer; a block needs
    both, because the gradient of A flows back through B.
    """

    name: str
    kind: str
    param: torch.nn.Parameter
    lora_A: torch.nn.Linear
    lora_B: torch.nn.Linear
    layer: int | None

    @property
    def numel(self) -> int:
        return self.param.numel()

    @property
    def module_name(self) -> str:
        """The adapted module (``...self_attn.q_proj``)."""
        return self.name.split(".lora_")[0]


def lora_blocks(model) -> list[LoraBlock]:
    """Every LoRA weight of ``model`` (a PeftModel), in ``named_parameters`` order."""
    modules = dict(model.named_modules())
    blocks = []
    for name, param in model.named_parameters():
        match = re.search(r"^(.*)\.lora_([AB])\.([^.]+)\.weight$", name)
        if not match:
            continue
        owner = modules[match.group(1)]
        adapter = match.group(3)
        lora_A, lora_B = owner.lora_A[adapter], owner.lora_B[adapter]
        if not (isinstance(lora_A, torch.nn.Linear) and isinstance(lora_B, torch.nn.Linear)):
            raise CluesError(f"{name}: only LoRA on linear layers can be scored (found {type(lora_A).__name__})")
        layer = _LAYER_INDEX.search(name)
        blocks.append(LoraBlock(name, match.group(2), param, lora_A, lora_B, int(layer.group(1)) if layer else None))
    if not blocks:
        raise CluesError("the model has no LoRA parameters to score")
    return blocks


def select_blocks(model, spec: str = "all") -> list[LoraBlock]:
    """The LoRA weights named by ``spec``: a keyword of :data:`KEYWORDS` or a regex over parameter names.

    Raises :class:`CluesError` when the choice matches nothing, never falls back to another set.
    """
    blocks = lora_blocks(model)
    spec = (spec or "all").strip()
    if spec == "all":
        chosen = blocks
    elif spec in ("q", "v"):
        wanted = _QUERY if spec == "q" else _VALUE
        chosen = [b for b in blocks if b.module_name.rsplit(".", 1)[-1] in wanted]
    elif spec in ("lora_A", "lora_B"):
        chosen = [b for b in blocks if b.kind == spec[-1]]
    elif spec in ("first-layer", "last-layer"):
        layers = [b.layer for b in blocks if b.layer is not None]
        if not layers:
            raise CluesError(f"--params {spec}: no layer index found in the LoRA parameter names")
        target = min(layers) if spec == "first-layer" else max(layers)
        chosen = [b for b in blocks if b.layer == target]
    else:
        try:
            pattern = re.compile(spec)
        except re.error as exc:
            raise CluesError(f"--params {spec!r}: neither one of {', '.join(KEYWORDS)} nor a valid regex ({exc})") from exc
        chosen = [b for b in blocks if pattern.search(b.name)]
    if not chosen:
        modules = sorted({b.module_name.rsplit(".", 1)[-1] for b in blocks})
        raise CluesError(
            f"--params {spec!r} matches no LoRA parameter; the adapter has {len(blocks)} LoRA weights on "
            f"modules {', '.join(modules)} (e.g. {blocks[0].name}); keywords: {', '.join(KEYWORDS)}"
        )
    return chosen
