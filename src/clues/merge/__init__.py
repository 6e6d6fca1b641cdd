"""Merging the silos' LoRA adapters into one: pure tensor math, no transport and no command.

:mod:`clues.merge.ops` holds the math of TIES, task arithmetic and DARE on a stack of same-shaped
tensors; :mod:`clues.merge.adapters` applies it to PEFT adapter folders, factor-wise (as PEFT does)
or on the exact weight changes. The merging server (:mod:`clues.server.merging`) calls it once per
condition; nothing here knows about silos, messages or Flower.
"""

from clues.merge.adapters import (
    SPACES,
    check_compatible,
    load_adapter,
    merge_adapters,
    merge_lora_state_dicts,
)
from clues.merge.ops import METHODS, combine

__all__ = [
    "METHODS",
    "SPACES",
    "check_compatible",
    "combine",
    "load_adapter",
    "merge_adapters",
    "merge_lora_state_dicts",
]
