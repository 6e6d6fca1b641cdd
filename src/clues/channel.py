"""The in-process transport between the server and a silo.

It moves exactly the bytes a network transport would: each request is serialized, logged,
deserialized on the silo side, answered, and the reply goes back the same way. Nothing else of the
silo is reachable from the server side, and the boundary test reads these very bytes. A failure is
turned into an ``error`` reply on the silo's side (:mod:`clues.failures`) before it crosses, so its
message (which may quote a record) stays in the silo's log; the server raises
:class:`~clues.failures.SiloFailure` with the public reason only.
"""

from __future__ import annotations

from typing import Callable

from clues import protocol
from clues.failures import SiloFailure, describe, failure_reply
from clues.protocol import BoundaryLog, Message
from clues.silo import Silo

Tap = Callable[[str, str, bytes], None]


class LocalChannel:
    """Server-side handle of one silo: ``request(message) -> reply``, over serialized bytes."""

    def __init__(self, silo: Silo, log: BoundaryLog | None = None, tap: Tap | None = None):
        self.name = silo.name
        self._silo = silo
        self._log = BoundaryLog(log.path if log else None, tap)

    def _cross(self, direction: str, message: Message, round: int | None) -> Message:
        blob = message.to_bytes()
        self._log.crossed(self.name, direction, message, blob, round)
        return Message.from_bytes(blob)

    def request(self, message: Message, round: int | None = None) -> Message:
        delivered = self._cross("server->silo", message, round)
        try:
            reply = self._silo.handle(delivered)
        except Exception as exc:  # silo side: only the kind and a public reason may cross
            reply = failure_reply(delivered.kind, exc, self.name, self._silo.workdir)
        received = self._cross("silo->server", reply, round)
        if received.kind == protocol.ERROR:
            raise SiloFailure(self.name, delivered.kind, describe(received))
        return received
