"""The silo's side of federated CLUES (CLUES.md section 4, federated): the same :class:`~clues.silo.Silo`,
three more request kinds.

- ``hello``: the silo's name and record count, so the server can address and weigh it.
- ``fit``: load the global adapter, take ``steps`` local AdamW steps on a record subset (all, kept,
  clean), reply the updated adapter and the subset size (FedAvg's weight). The AdamW moments and
  the step count persist in the silo's work folder between rounds (one state per condition): a
  silo's optimizer keeps its own history while the weights come from the server each round. The
  record order is the training module's seeded epoch permutation, continued across rounds, so a
  silo sees every record once per epoch whatever the number of local steps.
- ``fed-score``: at the global adapter of a scoring round, score every own record as
  ``eta * <G(z), g_val>`` along the validation direction sent by the server (``none``
  preconditioner by default; ``adam`` uses this silo's own persistent moments of the warm-up
  condition), and keep the per-checkpoint scores in the work folder. A checkpoint scored twice
  (a resent request) replaces its column instead of counting twice. The running sum is written as
  ``scores.jsonl``, the file ``select`` reads, so selection is the very code of merging mode.
  The reply carries a summary and a binned histogram, never a per-record score.

Only the global adapter, the validation direction and settings come in; only adapter tensors,
counts and summaries go out (and, with ``adam``, the scores of the *public* anchor records).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file

from clues import checkpoint as ckpt
from clues import protocol
from clues.failures import SiloError
from clues.io import write_json, write_jsonl
from clues.protocol import Message

DIRECTION_PREFIX = "gval::"
STATE_FILE = "state.json"
_ENCODINGS: dict[tuple, list[dict]] = {}  # content-addressed, so safe to share between silo objects


class FederatedSilo:
    """Mixin of :class:`~clues.silo.Silo` answering the federated kinds (uses its records, labels and work folder)."""

    def federated_handlers(self) -> dict:
        return {protocol.HELLO: self._hello, protocol.FIT: self._fit, protocol.FED_SCORE: self._fed_score}

    # -- hello ------------------------------------------------------------------------------------
    def _hello(self, message: Message) -> Message:
        """Name and record count; with ``public`` sets in the request, how many own records each shares
        with them (a count only: which records they are stays here)."""
        from clues.data.records import record_from_dict, shared_count

        reply = {"silo": self.name, "records": len(self._records), "labelled": self._labels is not None}
        if message.meta.get("public"):
            reply["public_overlap"] = {
                name: shared_count(self._records, (record_from_dict(r, name, n) for n, r in enumerate(rows, 1)))
                for name, rows in message.meta["public"].items()
            }
        return Message(protocol.INFO, reply)

    # -- fit --------------------------------------------------------------------------------------
    def _fed_dir(self, tag: str) -> Path:
        folder = self._workdir / "federated" / tag
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def _encodings(self, which: str, records, tokenizer, config) -> list[dict]:
        """Encoded subset, cached per process by the records' ids and the encoding settings."""
        from clues.data.template import encode_all
        from clues.silo import _records_digest

        key = (self.name, which, _records_digest(records), config.model, config.max_length, config.template)
        if key not in _ENCODINGS:
            _ENCODINGS[key], _ = encode_all(records, tokenizer, config.max_length, config.template)
        return _ENCODINGS[key]

    def _fit(self, message: Message) -> Message:
        from clues.data.batching import pad_batch
        from clues.federated_model import adapter_state, load_adapter_state, lora_model
        from clues.model.frozen_prefix import fill_prefix
        from clues.train import TrainConfig, epoch_order, optimizer_step, plan

        meta = message.meta
        config = TrainConfig.from_dict(meta["config"])
        which, tag, round_, steps = meta.get("subset", "all"), meta["tag"], int(meta["round"]), int(meta["steps"])
        records = self._subset(which)
        reply = {"tag": tag, "round": round_, "records": len(records), "num_examples": len(records)}
        if not records:
            return Message(protocol.ADAPTER, {**reply, "steps": 0})
        model, tokenizer = lora_model(config)
        load_adapter_state(model, message.tensors)
        encodings = self._encodings(which, records, tokenizer, config)
        if config.cache_frozen:  # the encodings live for the whole process: every round reuses the states
            fill_prefix(model, encodings, tokenizer.pad_token_id, config.batch_size)
        folder = self._fed_dir(tag)
        state = json.loads((folder / STATE_FILE).read_text()) if (folder / STATE_FILE).exists() else {"step": 0}
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=float(meta["lr"]), betas=(config.adam_beta1, config.adam_beta2),
                                      eps=config.adam_eps, weight_decay=config.weight_decay)
        if (folder / ckpt.OPTIMIZER_FILE).exists():
            _restore_moments(model, optimizer, ckpt.load_moments(folder), state["step"])
        steps_per_epoch, _ = plan(len(records), config)
        per_step = config.records_per_step
        pad_id = tokenizer.pad_token_id
        losses = []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed * 1_000_003 + round_)  # LoRA dropout: reproducible per round
            model.train()
            for _ in range(steps):
                epoch, position = divmod(state["step"], steps_per_epoch)
                order = epoch_order(len(records), config.seed, epoch)
                indices = order[position * per_step : (position + 1) * per_step]
                batches = [pad_batch([encodings[i] for i in indices[j : j + config.batch_size]], pad_id)
                           for j in range(0, len(indices), config.batch_size)]
                losses.append(optimizer_step(model, optimizer, batches, config.max_grad_norm))
                state["step"] += 1
            model.eval()
        save_file(ckpt.moment_tensors(model, optimizer), str(folder / ckpt.OPTIMIZER_FILE))
        write_json(folder / STATE_FILE, {**state, "round": round_})
        reply.update(steps=steps, train_loss=sum(losses) / len(losses) if losses else math.nan)
        return Message(protocol.ADAPTER, reply, adapter_state(model))

    # -- fed-score --------------------------------------------------------------------------------
    def _fed_score(self, message: Message) -> Message:
        from clues.data import record_from_dict
        from clues.federated_model import load_adapter_state, lora_model
        from clues.metrics import corruption_metrics, roc_auc
        from clues.scoring.engine import Scorer, ScoreSettings, compact_encodings
        from clues.scoring.preconditioners import needs_moments
        from clues.histogram import score_histogram
        from clues.silo import _config_from
        from clues.train import TrainConfig

        meta = message.meta
        config = TrainConfig.from_dict(meta["config"])
        settings = _config_from(meta.get("settings", {}), ScoreSettings)
        model, tokenizer = lora_model(config)
        adapter = {k: v for k, v in message.tensors.items() if not k.startswith(DIRECTION_PREFIX)}
        load_adapter_state(model, adapter)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        scorer = Scorer.for_model(model, pad_id, settings.params, settings.batch_size)
        direction = direction_from_tensors(scorer, message.tensors)
        moments = None
        if needs_moments(settings.precondition):
            folder = self._workdir / "federated" / meta.get("moments_of", "fl-mixed")
            if not (folder / ckpt.OPTIMIZER_FILE).exists():
                raise SiloError(f"silo {self.name!r}: preconditioner {settings.precondition!r} needs local optimizer "
                                 "moments and this silo has not trained yet")
            moments = ckpt.load_moments(folder)
        eta = float(meta["eta"])
        own = compact_encodings(self._records, tokenizer, config.max_length, config.template)
        column = (eta * scorer.score(own, direction, settings.precondition, moments)).tolist()
        reply = {"round": meta["round"], "checkpoint": meta["checkpoint"]}
        if meta.get("anchor"):  # public records: their scores may leave the silo
            anchors = [record_from_dict(r, "anchor", n) for n, r in enumerate(meta["anchor"], 1)]
            anchor_enc = compact_encodings(anchors, tokenizer, config.max_length, config.template)
            reply["anchor_scores"] = (eta * scorer.score(anchor_enc, direction, settings.precondition, moments)).tolist()
        columns = self._score_columns()
        columns[meta["checkpoint"]] = column
        write_json(self._workdir / "federated" / "score_columns.json", columns)
        names = sorted(columns, key=_checkpoint_order)
        totals = [math.fsum(columns[name][i] for name in names) for i in range(len(self._records))]
        write_jsonl(self._workdir / "scores.jsonl", (
            {"id": r.id, "score": s, "per_checkpoint": [columns[name][i] for name in names]}
            for i, (r, s) in enumerate(zip(self._records, totals))
        ))
        self._scores["clues"] = totals
        self._kept.pop("clues", None)
        clean = [self._labels[r.id] for r in self._records] if self._labels is not None else None
        values = torch.tensor(totals, dtype=torch.float64)
        reply.update(
            checkpoints=names,
            summary={"count": len(totals), "mean": float(values.mean()),
                     "std": float(values.std()) if len(totals) > 1 else 0.0},
            histogram=score_histogram(totals, clean),
        )
        if clean is not None:
            reply["auroc"] = roc_auc(totals, clean)
            if self._corruptions is not None:
                reply["by_corruption"] = corruption_metrics(totals, clean, self._corruption_list())
        return Message(protocol.SCORES, reply)

    def _score_columns(self) -> dict[str, list[float]]:
        path = self._workdir / "federated" / "score_columns.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        return json.loads(path.read_text()) if path.exists() else {}


def _checkpoint_order(name: str):
    digits = "".join(ch for ch in name if ch.isdigit())
    return (int(digits) if digits else 0, name)


def _restore_moments(model, optimizer, moments: dict, step: int) -> None:
    """Put a silo's saved AdamW moments back on the (freshly created) optimizer."""
    for name, param in model.named_parameters():
        if param.requires_grad and name in moments:
            exp_avg, exp_avg_sq = moments[name]
            optimizer.state[param] = {"step": torch.tensor(float(step)),
                                      "exp_avg": exp_avg.to(param.device, param.dtype),
                                      "exp_avg_sq": exp_avg_sq.to(param.device, param.dtype)}


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
