"""The silos behind Flower's Grid, as a :class:`~clues.server.fleet.Fleet` (simulation and deployment engines alike).

:class:`GridFleet` waits for the SuperNodes, asks each for its silo name (``hello``), then turns
every clues request into a Flower ``Message`` (:mod:`clues.flower.records`), sends a round with
``Grid.send_and_receive`` under a timeout and turns the replies back. A reply that carries an error
(the silo's handler raised) or that does not arrive before the timeout (the silo disappeared) is
logged and left out: the round completes with the silos that answered. Every payload crossing goes
to the one :class:`~clues.protocol.BoundaryLog`, with its Flower message type and record names.
"""

from __future__ import annotations

import time
from typing import Mapping

from flwr.app import Message
from flwr.serverapp import Grid
from rich.console import Console

from clues import protocol
from clues.errors import CluesError
from clues.failures import SiloFailure, describe
from clues.flower.records import (
    MESSAGE_TYPES,
    blob_of,
    from_records,
    payload_keys,
    to_records,
)
from clues.names import check_silo_name
from clues.protocol import BoundaryLog
from clues.server.fleet import note_failure


class GridFleet:
    """The silos behind a Flower Grid, addressed by the names they report."""

    engine = "flower"

    def __init__(self, grid: Grid, expected: int, log: BoundaryLog | None = None, timeout: float = 600.0,
                 console: Console | None = None, wait: float = 120.0):
        self.grid, self.timeout = grid, timeout
        self.log = log or BoundaryLog()
        self.console = console or Console()
        self.failures: list[dict] = []
        self._nodes: dict[str, int] = {}
        nodes = self._wait_for_nodes(expected, wait)
        self._nodes = {f"node-{node}": node for node in nodes}  # until each says its silo name
        named: dict[str, int] = {}
        for label, reply in self.exchange({label: protocol.Message(protocol.HELLO) for label in self._nodes}, 0).items():
            node = self._nodes[label]
            try:
                name = check_silo_name(reply.meta.get("silo"), f"the hello reply of SuperNode {node}")
            except CluesError as exc:
                self._fail(0, label, protocol.HELLO, str(exc), node)
                continue
            if name in named:
                self._fail(0, name, protocol.HELLO, f"SuperNode {named[name]} already answers as silo {name!r}", node)
                continue
            named[name] = node
        self._nodes = dict(sorted(named.items()))  # by name: the same order whatever order the nodes joined in
        if not self._nodes:
            raise CluesError("no silo joined the federation: every SuperNode failed or stayed silent (see above)")
        self.console.print(f"federation: {len(self._nodes)} silos ({', '.join(self._nodes)})")

    def _wait_for_nodes(self, expected: int, wait: float) -> list[int]:
        deadline = time.monotonic() + wait
        nodes = list(self.grid.get_node_ids())
        while len(nodes) < expected and time.monotonic() < deadline:
            time.sleep(0.5)
            nodes = list(self.grid.get_node_ids())
        if len(nodes) < expected:
            self.console.print(f"[yellow]only {len(nodes)} of {expected} SuperNodes connected after {wait:.0f} s; going on with them[/yellow]")
        return nodes

    def silos(self) -> list[str]:
        return list(self._nodes)

    def _cross(self, silo: str, direction: str, message, content, message_type: str, round) -> None:
        self.log.crossed(silo, direction, message, blob_of(content), round, message_type=message_type,
                         records=payload_keys(content))

    def exchange(self, requests: Mapping[str, protocol.Message], round: int | None = None) -> dict[str, protocol.Message]:
        outgoing, names = [], {}
        online = set(self.grid.get_node_ids())
        for name in [n for n in requests if self._nodes[n] not in online]:
            self._fail(round, name, requests[name].kind, "its SuperNode is offline", self._nodes[name])  # no need to wait for it
        requests = {n: r for n, r in requests.items() if self._nodes[n] in online}
        for name, request in requests.items():
            content = to_records(request)
            message_type = MESSAGE_TYPES[request.kind]
            self._cross(name, "server->silo", request, content, message_type, round)
            node = self._nodes[name]
            names[node] = name
            outgoing.append(Message(content, dst_node_id=node, message_type=message_type, group_id=str(round or 0)))
        replies, failed = {}, set()
        for reply in self.grid.send_and_receive(outgoing, timeout=self.timeout):
            node = reply.metadata.src_node_id
            name = names.get(node)
            if name is None:
                continue
            if reply.has_error():  # the ClientApp crashed: Flower's own error
                failed.add(name)
                self._fail(round, name, requests[name].kind, _last_line(reply.error.reason), node)
                continue
            message = from_records(reply.content)
            self._cross(name, "silo->server", message, reply.content, reply.metadata.message_type, round)
            if message.kind == protocol.ERROR:  # the silo failed and said so in public terms (clues.failures)
                failed.add(name)
                self._fail(round, _reported_name(name, message), requests[name].kind, describe(message), node)
                continue
            replies[name] = message
        for name in requests:
            if name not in replies and name not in failed:
                self._fail(round, name, requests[name].kind, f"no reply within {self.timeout:.0f} s", self._nodes[name])
        # In the order asked, not the order of arrival: FedAvg's sum and results.json do not depend on timing.
        return {name: replies[name] for name in requests if name in replies}

    def request(self, silo: str, message: protocol.Message, round: int | None = None) -> protocol.Message:
        """One silo's reply; :class:`~clues.failures.SiloFailure` with its public reason if none came."""
        replies = self.exchange({silo: message}, round)
        if silo not in replies:
            reason = next((f["reason"] for f in reversed(self.failures) if f["silo"] == silo), "no reply")
            raise SiloFailure(silo, message.kind, reason)
        return replies[silo]

    def _fail(self, round, name: str, kind: str, reason: str, node: int | None = None) -> None:
        """Log a missing reply under the silo's name (and its Flower node id, to find the SuperNode)."""
        note_failure(self, round, name, kind, reason, node=node)


def _reported_name(label: str, reply: protocol.Message) -> str:
    """The silo a failure belongs to: before hello the server only knows a node label, so the name
    the failing silo put in its error reply is used when it is a valid silo name."""
    if not label.startswith("node-"):
        return label
    try:
        return check_silo_name(reply.meta.get("silo"), "error reply")
    except CluesError:
        return label


def _last_line(reason: str) -> str:
    lines = [line.strip() for line in str(reason).splitlines() if line.strip()]
    for line in reversed(lines):
        if "Message:" in line:
            return line.split("Message:", 1)[1].strip().rstrip("'>")
    return lines[-1] if lines else "error"
