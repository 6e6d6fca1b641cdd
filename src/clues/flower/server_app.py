"""The Flower ServerApp: :class:`~clues.federated.FederatedServer` with the Grid as its fleet.

:class:`GridFleet` is the server's whole view of the federation: it waits for the SuperNodes,
asks each for its silo name (``hello``), then turns every clues request into a Flower ``Message``
(:mod:`clues.flower.records`), sends a round with ``Grid.send_and_receive`` under a timeout
and turns the replies back. A reply that carries an error (the silo's handler raised) or that does
not arrive before the timeout (the silo disappeared) is logged and left out: the round completes
with the silos that answered. Every payload crossing is logged to ``boundary_log.jsonl`` with its
Flower message type, record names and wire size.

The simulation engine builds the app in-process with :func:`make_server_app`; the deployment
engine loads ``app`` below, which reads its job (run config + federated settings, a JSON file
written by :mod:`clues.flower.deployment`) from the run config key ``job``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Mapping

from flwr.app import Context, Message
from flwr.serverapp import Grid, ServerApp
from rich.console import Console

from clues import protocol
from clues.flower.records import MESSAGE_TYPES, blob_of, from_records, payload_keys, to_records
from clues.errors import CluesError
from clues.failures import describe
from clues.names import check_silo_name
from clues.protocol import BoundaryLog

Tap = Callable[[str, str, bytes], None]


class GridFleet:
    """The silos behind a Flower Grid, addressed by the names they report."""

    engine = "flower"

    def __init__(self, grid: Grid, expected: int, log: BoundaryLog, timeout: float = 600.0,
                 tap: Tap | None = None, console: Console | None = None, wait: float = 120.0):
        self.grid, self.timeout = grid, timeout
        self.log = BoundaryLog(log.path, tap) if tap is not None else log
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
        self._nodes = named
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
        return replies

    def _fail(self, round, name: str, kind: str, reason: str, node: int | None = None) -> None:
        """Log a missing reply under the silo's name (and its Flower node id, to find the SuperNode)."""
        self.failures.append({"round": round, "silo": name, "node": node, "kind": kind, "reason": reason})
        self.console.print(f"silo {name} failed in round {round} ({kind}): {reason}", style="yellow", markup=False, highlight=False)


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


def run_job(grid: Grid, config, fed, expected: int, tap: Tap | None = None, console: Console | None = None) -> dict:
    """One federated CLUES run on ``grid``: what both engines' ServerApps do."""
    from clues.federated import FederatedServer

    console = console or Console()
    log = BoundaryLog(Path(config.out) / "boundary_log.jsonl")
    fleet = GridFleet(grid, expected, log, fed.round_timeout, tap, console)
    return FederatedServer(config, fed, fleet, console).run()


def make_server_app(config, fed, expected: int, holder: dict, tap: Tap | None = None, console: Console | None = None) -> ServerApp:
    """A ServerApp for the simulation engine; results (or the exception) land in ``holder``."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            holder["results"] = run_job(grid, config, fed, expected, tap, console)
        except BaseException as exc:  # surfaced by the caller: the simulation engine would only log it
            holder["error"] = exc

    return app


def load_job(path: str | Path):
    """``(RunConfig, FedSettings, expected silos)`` from a job file written by the deploy tool."""
    from clues.config import make_config
    from clues.federated import FedSettings

    data = json.loads(Path(path).read_text(encoding="utf-8"))
    fed = data["federated"]
    fed = FedSettings(**{**fed, "score_rounds": tuple(fed["score_rounds"]) if fed.get("score_rounds") else None})
    return make_config(data["config"]), fed, int(data.get("expected_silos", len(data["config"].get("silos", {})) or 1))


# The deployment engine's ServerApp (pyproject: serverapp = "clues.flower.server_app:app").
app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    job = context.run_config.get("job")
    if not job:
        raise CluesError("run config has no 'job' (the JSON file written by python -m clues.flower.deployment)")
    config, fed, expected = load_job(str(job))
    run_job(grid, config, fed, expected)
