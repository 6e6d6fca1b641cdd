"""``fed-score`` (federated): score own records at the global adapter along the server's validation direction.

At a score round the server sends the global adapter and the validation gradient there (public
data); every own record gets ``eta * <G(z), g_val>`` (``none`` preconditioner by default; ``adam``
uses this silo's own persistent moments of the warm-up condition). The per-checkpoint columns are
kept in the work folder; a checkpoint scored twice (a resent request) replaces its column instead
of counting twice, and a column of a checkpoint the run does not score (``checkpoints`` of the
request: left by an earlier run with other score rounds in the same folder) is dropped. The running sum is written as ``scores.jsonl``, the file ``select`` reads, so
selection is the very code of merging mode. The reply carries a summary and a binned histogram,
never a per-record score (and, with ``adam``, the scores of the *public* anchor records).
"""

from __future__ import annotations

import json
import math

import torch

from clues import checkpoint as ckpt
from clues import protocol
from clues.data.template import padding_id
from clues.failures import SiloError
from clues.io import write_json, write_jsonl
from clues.protocol import Message
from clues.silo.summary import score_report

DIRECTION_PREFIX = "gval::"


def answer(silo, message: Message) -> Message:
    from clues.data import record_from_dict
    from clues.federated_model import lora_model
    from clues.scoring.engine import Scorer, ScoreSettings, compact_encodings
    from clues.scoring.preconditioners import needs_moments
    from clues.silo.score import settings_from
    from clues.train import TrainConfig

    meta = message.meta
    config = TrainConfig.from_dict(meta["config"])
    settings = settings_from(meta.get("settings", {}), ScoreSettings)
    model, tokenizer = lora_model(config)
    adapter = {k: v for k, v in message.tensors.items() if not k.startswith(DIRECTION_PREFIX)}
    ckpt.load_adapter_state(model, adapter)
    scorer = Scorer.for_model(model, padding_id(tokenizer), settings.params, settings.batch_size)
    direction = direction_from_tensors(scorer, message.tensors)
    moments = None
    if needs_moments(settings.precondition):
        folder = silo.workdir / "federated" / meta.get("moments_of", "fl-mixed")
        if not (folder / ckpt.OPTIMIZER_FILE).exists():
            raise SiloError(f"silo {silo.name!r}: preconditioner {settings.precondition!r} needs local optimizer "
                            "moments and this silo has not trained yet")
        moments = ckpt.load_moments(folder)
    eta = float(meta["eta"])
    own = compact_encodings(silo.records, tokenizer, config.max_length, config.template)
    column = (eta * scorer.score(own, direction, settings.precondition, moments)).tolist()
    reply = {"round": meta["round"], "checkpoint": meta["checkpoint"]}
    if meta.get("anchor"):  # public records: their scores may leave the silo
        anchors = [record_from_dict(r, "anchor", n) for n, r in enumerate(meta["anchor"], 1)]
        anchor_enc = compact_encodings(anchors, tokenizer, config.max_length, config.template)
        reply["anchor_scores"] = (eta * scorer.score(anchor_enc, direction, settings.precondition, moments)).tolist()
    columns = _score_columns(silo)
    if "checkpoints" in meta:  # this run's score rounds: a column of any other is an earlier run's
        columns = {name: values for name, values in columns.items() if name in meta["checkpoints"]}
    columns[meta["checkpoint"]] = column
    write_json(silo.workdir / "federated" / "score_columns.json", columns)
    names = sorted(columns, key=_checkpoint_order)
    totals = [math.fsum(columns[name][i] for name in names) for i in range(len(silo.records))]
    write_jsonl(silo.workdir / "scores.jsonl", (
        {"id": r.id, "score": s, "per_checkpoint": [columns[name][i] for name in names]}
        for i, (r, s) in enumerate(zip(silo.records, totals))
    ))
    silo.scores["clues"] = totals
    silo.kept.pop("clues", None)
    reply["checkpoints"] = names
    reply.update(score_report(totals, silo.clean(), silo.corruption_list(), ranking=False))
    return Message(protocol.SCORES, reply)


def _score_columns(silo) -> dict[str, list[float]]:
    path = silo.workdir / "federated" / "score_columns.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    return json.loads(path.read_text()) if path.exists() else {}


def _checkpoint_order(name: str):
    digits = "".join(ch for ch in name if ch.isdigit())
    return (int(digits) if digits else 0, name)


def direction_tensors(scorer, flat: torch.Tensor) -> dict[str, torch.Tensor]:
    """Split a flat validation direction into named tensors (one per LoRA block) for the wire."""
    out, offset = {}, 0
    for block in scorer.blocks:
        out[DIRECTION_PREFIX + block.name] = flat[offset : offset + block.numel].reshape(block.param.shape).to(torch.float32)
        offset += block.numel
    return out


def direction_from_tensors(scorer, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """The flat direction in this scorer's block order; a block without its piece is an error."""
    pieces = []
    for block in scorer.blocks:
        piece = tensors.get(DIRECTION_PREFIX + block.name)
        if piece is None:
            raise SiloError(f"the validation direction has no piece for {block.name}")
        pieces.append(piece.reshape(-1).to(torch.float64))
    return torch.cat(pieces)
