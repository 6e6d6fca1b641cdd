"""Collaboration across silos: merging their LoRA adapters (and, later, federated training)."""

from clues.collab.merge import SPACES, check_compatible, load_adapter, merge_adapters, merge_lora_state_dicts
from clues.collab.merge_ops import METHODS, combine

__all__ = [
    "METHODS",
    "SPACES",
    "check_compatible",
    "combine",
    "load_adapter",
    "merge_adapters",
    "merge_lora_state_dicts",
]
