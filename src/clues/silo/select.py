"""``select``: keep the records scoring at least ``tau`` (or, ``count``, the best ``count``).

The kept subset is written to ``kept[-<method>].jsonl`` in the work folder, where ``train`` and
``fit`` read it; the reply carries counts (and, with labels, selection metrics). Merging and
federated mode share this handler: both leave their scores in the same file.
"""

from __future__ import annotations

from clues import protocol
from clues.data import record_to_json
from clues.io import write_json, write_jsonl
from clues.metrics import corruption_metrics, roc_auc, selection_metrics
from clues.protocol import Message
from clues.select import select, select_top, summary


def answer(silo, message: Message) -> Message:
    meta = message.meta
    method = meta.get("method", "clues")
    scores = silo.method_scores(method)
    if meta.get("count") is not None:
        decisions = select_top(scores, int(meta["count"]))
        reply = {"tau": None, "count": int(meta["count"])}
    else:
        tau = float(meta["tau"])
        decisions = select(scores, tau)
        reply = {"tau": tau}
    silo.kept[method] = [r for r, keep in zip(silo.records, decisions) if keep]
    write_jsonl(silo.file("kept", method), (record_to_json(r) for r in silo.kept[method]))
    reply.update(summary(decisions))
    clean = silo.clean()
    if clean is not None:
        reply["clean_total"] = sum(clean)
        reply.update(selection_metrics(decisions, clean))
        reply["auroc"] = roc_auc(scores, clean)
        if silo.corruptions is not None:
            reply["by_corruption"] = corruption_metrics(scores, clean, silo.corruption_list(), decisions)
    write_json(silo.file("selection", method, ".json"), reply)
    return Message(protocol.SELECTION, reply)
