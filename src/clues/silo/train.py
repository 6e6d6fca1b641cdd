"""``train``: a LoRA run on a record subset (merging mode; the LESS and DataInf warm-ups).

``steps_of = "all"`` (``equal_steps``): as many optimizer steps as the run on all the silo's records.

One run folder per (tag, data, config), so a changed subset or config never collides with an old
run, and ``runs/<tag>.latest`` names the newest (what ``score`` scores on). The reply carries the
adapter tensors unless ``return_adapter`` is false, the record count and the training loss.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

from clues import checkpoint as ckpt
from clues import protocol
from clues.protocol import Message
from clues.train import TrainConfig, data_fingerprint, plan, train


def records_digest(records) -> str:
    """A short key of a record subset (its ids in order): names in-process encoding caches (run folders
    are keyed by content, :func:`run_dir`)."""
    digest = hashlib.sha256()
    for record in records:
        digest.update(record.id.encode("utf-8") + b"\x00")
    return digest.hexdigest()[:12]


def run_dir(silo, tag: str, records, config: TrainConfig) -> Path:
    """One folder per (tag, data, config): a changed subset, an edited record or a changed config never
    collides with an old run (an edited silo file trains afresh instead of refusing to resume)."""
    key = hashlib.sha256(json.dumps([data_fingerprint(records), config.to_dict()], sort_keys=True, default=str).encode()).hexdigest()[:10]
    return silo.workdir / "runs" / f"{tag}-{key}"


def latest_run(silo, tag: str) -> Path | None:
    latest = silo.workdir / "runs" / f"{tag}.latest"
    return silo.workdir / "runs" / latest.read_text(encoding="utf-8").strip() if latest.exists() else None


def answer(silo, message: Message) -> Message:
    meta = message.meta
    config = TrainConfig.from_dict(meta["config"])
    records = silo.subset(meta.get("subset", "all"))
    if meta.get("steps_of") == "all" and config.epochs is not None and records:
        # As many optimizer steps as the run on all records: a condition that trained on fewer
        # records must not look worse (or better) for having taken fewer steps.
        config = replace(config, epochs=None, max_steps=plan(len(silo.records), config)[1])
    reply = {"tag": meta["tag"], "records": len(records)}
    if not records:
        return Message(protocol.ADAPTER, reply)
    folder = run_dir(silo, meta["tag"], records, config)
    final = train(config, records, folder, console=silo.console)
    (silo.workdir / "runs" / f"{meta['tag']}.latest").write_text(folder.name, encoding="utf-8")
    reply["train_loss"] = json.loads((final / "trainer_meta.json").read_text())["train_loss"]
    reply["adapter_config"] = json.loads((final / "adapter_config.json").read_text())
    tensors = ckpt.load_tensors(final / ckpt.ADAPTER_FILE) if meta.get("return_adapter", True) else {}
    return Message(protocol.ADAPTER, reply, tensors)
