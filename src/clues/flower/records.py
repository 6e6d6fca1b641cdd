"""clues messages <-> Flower records: the only translation between the two worlds.

A :class:`~clues.protocol.Message` travels in Flower as its one wire encoding
(:meth:`~clues.protocol.Message.to_bytes`, a safetensors blob) in the ``ConfigRecord`` ``"clues"``,
so Flower carries the very bytes the in-process fleet carries and the boundary test reads. Adapter
replies add a ``MetricRecord`` ``"metrics"`` with ``num-examples``, what Flower's own strategies
weigh by. The conversion is lossless both ways.
"""

from __future__ import annotations

from clues import protocol
from clues.protocol import Message

CLUES, BLOB, METRICS = "clues", "message", "metrics"

# Flower message types (``<category>.<action>``) per clues request kind.
MESSAGE_TYPES = {
    protocol.FIT: "train",
    protocol.TRAIN: "train",  # a silo's own training run (merging mode; LESS and DataInf warm-ups)
    protocol.SCORE: "query.score",  # records scored inside the silo
    protocol.HELLO: "query.hello",
    protocol.FED_SCORE: "query.score",
    protocol.SELECT: "query.select",
}


def to_records(message: Message, blob: bytes | None = None):
    """``blob``: the message's bytes when the caller already has them (they are logged as they go)."""
    from flwr.app import ConfigRecord, MetricRecord, RecordDict

    content = RecordDict()
    content[CLUES] = ConfigRecord({BLOB: message.to_bytes() if blob is None else blob})
    if message.kind == protocol.ADAPTER:
        content[METRICS] = MetricRecord({"num-examples": int(message.meta.get("num_examples", 0))})
    return content


def blob_of(content) -> bytes:
    return bytes(content.config_records[CLUES][BLOB])


def from_records(content) -> Message:
    return Message.from_bytes(blob_of(content))


def payload_keys(content) -> list[str]:
    return sorted(content.keys())
