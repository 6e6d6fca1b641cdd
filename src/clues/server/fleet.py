"""The server's whole view of the silos: a :class:`Fleet`, whatever carries the messages.

Every server (:mod:`clues.server.merging`, :mod:`clues.server.federated`) talks to silos only
through a fleet, so the same server runs over in-process silos (:class:`LocalFleet`, here) and
over Flower's Grid (:class:`clues.flower.grid.GridFleet`, the simulation and deployment engines
alike), and a test hands in the fleet it wants instead of patching a transport.

Two ways to ask:

- :meth:`Fleet.exchange` sends each silo its request and returns the replies that came back; a silo
  that fails or stays silent is logged in ``failures`` and left out (federated rounds go on
  without it);
- :meth:`Fleet.request` asks one silo and raises :class:`~clues.failures.SiloFailure` when it does not
  answer (merging mode needs every silo's answer).

Every crossing, both ways, goes through one :class:`~clues.protocol.BoundaryLog`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping, Protocol

from rich.console import Console

from clues import protocol
from clues.failures import LOG_NAME as FAILURE_LOG
from clues.failures import SiloFailure, describe, failure_reply
from clues.protocol import BoundaryLog, Message, Tap

LOG_NAME = "boundary_log.jsonl"


class Fleet(Protocol):
    """The server's handle of the silos."""

    engine: str
    failures: list[dict]

    def silos(self) -> list[str]: ...

    def exchange(self, requests: Mapping[str, Message], round: int | None = None) -> dict[str, Message]:
        """Send each silo its request; return the replies that came back (failures are logged, left out)."""

    def request(self, silo: str, message: Message, round: int | None = None) -> Message:
        """One silo's reply; :class:`~clues.failures.SiloFailure` if it fails."""


def note_failure(fleet, round, silo: str, kind: str, reason: str, **where) -> None:
    """Record a silo that did not answer (public reason only) and say so on the fleet's console."""
    fleet.failures.append({"round": round, "silo": silo, **where, "kind": kind, "reason": reason})
    fleet.console.print(f"silo {silo} failed in round {round} ({kind}): {reason}", style="yellow", markup=False,
                        highlight=False)


class LocalFleet:
    """Silos in this process, reached over the very bytes a network would carry.

    Each request is serialized, logged, deserialized on the silo's side and answered; the reply goes
    back the same way. A failure becomes an ``error`` reply on the silo's side (:mod:`clues.failures`)
    before it crosses, so its message (which may quote a record) stays in the silo's log.
    """

    engine = "local"

    def __init__(self, silos: Iterable, log: BoundaryLog | None = None, console: Console | None = None):
        self._silos = {silo.name: silo for silo in silos}
        self.log = log or BoundaryLog()
        self.console = console or Console(quiet=True)
        self.failures: list[dict] = []

    def silos(self) -> list[str]:
        return list(self._silos)

    def _cross(self, silo: str, direction: str, message: Message, round: int | None) -> Message:
        blob = message.to_bytes()
        self.log.crossed(silo, direction, message, blob, round)
        return Message.from_bytes(blob)

    def request(self, silo: str, message: Message, round: int | None = None) -> Message:
        holder = self._silos[silo]
        delivered = self._cross(silo, "server->silo", message, round)
        try:
            reply = holder.handle(delivered)
        except Exception as exc:  # silo side: only the kind and a public reason may cross
            reply = failure_reply(delivered.kind, exc, silo, holder.workdir)
        received = self._cross(silo, "silo->server", reply, round)
        if received.kind == protocol.ERROR:  # in this process the silo's log is a file the operator can open
            raise SiloFailure(silo, delivered.kind, describe(received), log=Path(holder.workdir) / FAILURE_LOG)
        return received

    def exchange(self, requests: Mapping[str, Message], round: int | None = None) -> dict[str, Message]:
        replies = {}
        for name, message in requests.items():
            try:
                replies[name] = self.request(name, message, round)
            except Exception as exc:  # a failing silo must not stop the consortium
                reason = exc.reason if isinstance(exc, SiloFailure) else str(exc)  # a silo's: public terms only
                note_failure(self, round, name, message.kind, reason)
        return replies


def open_local_fleet(config, console: Console | None = None, tap: Tap | None = None) -> LocalFleet:
    """The silos of ``config`` in this process (records, and labels in a benchmark), work folders in
    ``OUT/silos/<name>``, crossings logged to ``OUT/boundary_log.jsonl``.

    Every silo file and the labels are read and checked here, before anything is written.
    """
    from clues.data import load_many
    from clues.silo import Silo

    records = load_many(config.silos.values())  # ids unique across silos; every problem of every file at once
    by_silo = {name: [r for r in records if r.file == str(path)] for name, path in config.silos.items()}
    labels, corruptions = silo_labels(config.labels, by_silo)
    out = Path(config.out)
    silos = [Silo(name, by_silo[name], out / "silos" / name, labels[name], console=console, corruptions=corruptions[name])
             for name in config.silos]
    return LocalFleet(silos, BoundaryLog(out / LOG_NAME, tap), console)


def silo_labels(path: str | None, by_silo: Mapping[str, list]) -> tuple[dict, dict]:
    """Each silo's labels (simulation with known pollution), every record covered, and the corruption
    type of each record (None when clean or not given); None per silo without labels."""
    from clues.errors import CluesError
    from clues.metrics import load_labels

    if not path:
        return dict.fromkeys(by_silo), dict.fromkeys(by_silo)
    rows = load_labels(path)
    found, kinds = {}, {}
    for name, records in by_silo.items():
        missing = [r.id for r in records if r.id not in rows]
        if missing:
            raise CluesError(f"{path}: no label for record {missing[0]!r} of silo {name!r}")
        found[name] = {r.id: bool(rows[r.id]["clean"]) for r in records}
        kinds[name] = {r.id: rows[r.id].get("corruption") for r in records}
    return found, kinds
