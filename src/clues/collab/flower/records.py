"""clues messages <-> Flower records: the only translation between the two worlds.

A :class:`~clues.protocol.Message` becomes a ``RecordDict`` with

- ``"arrays"``: an ``ArrayRecord`` of its tensors (the adapter, the validation direction),
- ``"clues"``: a ``ConfigRecord`` with the kind and the JSON meta,
- ``"metrics"``: a ``MetricRecord`` with ``num-examples`` on adapter replies, so Flower's own
  aggregation (``aggregate_arrayrecords``) can weigh them.

The conversion is lossless both ways, so what a silo computes is what the server reads, whatever
engine carries it. :func:`wire_bytes` gives the bytes Flower actually ships for a payload (every
record and array, deflated), which the boundary log counts and the boundary test reads.
"""

from __future__ import annotations

import json

from clues import protocol
from clues.protocol import Message

ARRAYS, CLUES, METRICS = "arrays", "clues", "metrics"

# Flower message types (``<category>.<action>``) per clues request kind.
MESSAGE_TYPES = {
    protocol.FIT: "train",
    protocol.TRAIN: "train",  # a local warm-up run (LESS and DataInf baselines need one)
    protocol.SCORE: "query.score",  # a baseline scored inside the silo
    protocol.HELLO: "query.hello",
    protocol.FED_SCORE: "query.score",
    protocol.SELECT: "query.select",
}


def to_records(message: Message):
    from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

    content = RecordDict()
    content[CLUES] = ConfigRecord({"kind": message.kind, "meta": json.dumps(message.meta, ensure_ascii=False, sort_keys=True)})
    if message.tensors:
        content[ARRAYS] = ArrayRecord({k: v.detach().cpu().contiguous() for k, v in message.tensors.items()})
    if message.kind == protocol.ADAPTER:
        content[METRICS] = MetricRecord({"num-examples": int(message.meta.get("num_examples", 0))})
    return content


def from_records(content) -> Message:
    header = content.config_records[CLUES]
    tensors = {}
    if ARRAYS in content.array_records:
        tensors = {k: v.clone() for k, v in content.array_records[ARRAYS].to_torch_state_dict().items()}
    return Message(str(header["kind"]), json.loads(str(header["meta"])), tensors)


def wire_bytes(obj) -> bytes:
    """The deflated bytes of a Flower object and all its children (what travels between the processes)."""
    parts = [obj.deflate()]
    for child in (obj.children or {}).values():
        parts.append(wire_bytes(child))
    return b"".join(parts)


def payload_keys(content) -> list[str]:
    return sorted(content.keys())

