"""The messages that cross the privacy boundary between the server and a silo.

A message is a kind, a JSON-able ``meta`` dictionary and named tensors; on the wire it is one
safetensors blob whose header metadata carries the kind and the JSON (:meth:`Message.to_bytes`),
the only encoding there is. Every transport moves exactly these bytes: the in-process fleet hands
them over, Flower carries them in one record (:mod:`clues.flower.records`), so the boundary test
that inspects them covers every deployment. :class:`BoundaryLog` is the one place a crossing is
logged (and, in tests, tapped), whatever the transport.

What a silo may send out: adapter tensors, counts, summaries and scores of *public* records
(anchors). What it never sends: its records' text, token ids or ids.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from clues.errors import CluesError

# Server -> silo requests.
TRAIN = "train"  # fine-tune a LoRA adapter on a subset of the silo's records
SCORE = "score"  # score own records (and the public anchors) on the silo's own checkpoints
SELECT = "select"  # keep the records with score >= tau
# Federated mode (clues.silo.fit, clues.silo.fed_score): the global model travels with every request.
HELLO = "hello"  # who are you? (name and record count only)
FIT = "fit"  # a few local optimizer steps from the global adapter; reply the updated adapter
FED_SCORE = "fed-score"  # score own records at the global adapter along a validation direction, keep the sum here
# Silo -> server replies.
ADAPTER = "adapter"
SCORES = "scores"
SELECTION = "selection"
INFO = "info"
ERROR = "error"

Tap = Callable[[str, str, bytes], None]  # (silo, direction, wire bytes): what a test sees cross

KINDS = (TRAIN, SCORE, SELECT, HELLO, FIT, FED_SCORE, ADAPTER, SCORES, SELECTION, INFO, ERROR)


@dataclass
class Message:
    kind: str
    meta: dict = field(default_factory=dict)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise CluesError(f"unknown message kind {self.kind!r}")

    def to_bytes(self) -> bytes:
        """Serialize: tensors as safetensors, kind and meta as JSON in its header metadata."""
        tensors = {name: t.detach().to("cpu").contiguous() for name, t in self.tensors.items()}
        header = {"kind": self.kind, "meta": json.dumps(self.meta, ensure_ascii=False, sort_keys=True)}
        return save_tensors(tensors, metadata=header)

    @classmethod
    def from_bytes(cls, blob: bytes) -> "Message":
        header_len = int.from_bytes(blob[:8], "little")
        metadata = json.loads(blob[8 : 8 + header_len]).get("__metadata__", {})
        return cls(kind=metadata["kind"], meta=json.loads(metadata["meta"]), tensors=load_tensors(blob))


class BoundaryLog:
    """One JSON line per message crossing the boundary, in order: round, silo, direction, kind, payload
    keys, bytes. No wall-clock time: two runs with the same seed write the same log.

    ``tap(silo, direction, blob)`` sees the very bytes that crossed (the boundary tests read them).
    """

    def __init__(self, path: str | Path | None = None, tap: Tap | None = None):
        self.path = Path(path) if path else None
        self.tap = tap

    def crossed(self, silo: str, direction: str, message: Message, blob: bytes, round: int | None = None,
                **extra) -> None:
        """``extra``: transport details (e.g. Flower's message type and record names) added to the row."""
        if self.tap is not None:
            self.tap(silo, direction, blob)
        if not self.path:
            return
        row = {
            "round": round,
            "silo": silo,
            "direction": direction,
            "kind": message.kind,
            "meta_keys": sorted(message.meta),
            "tensor_keys": len(message.tensors),
            "bytes": len(blob),
            **extra,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)  # at the first crossing: bad input leaves no folder
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")
