"""The Flower ClientApp of a silo: it only transports messages to and from :meth:`clues.silo.Silo.handle`.

Which silo a SuperNode is comes from its node config:

- deployment engine: ``flower-supernode --node-config "silo-file='/data/clinic.jsonl'"`` (optional
  ``silo-name``, ``workdir`` (default: ``<silo file folder>/<name>-clues``) and ``labels-file`` for
  benchmarks with known pollution);
- simulation engine: the virtual SuperNode's ``partition-id`` picks a :class:`SiloSpec` from the
  list given to :func:`make_client_app`.

A Flower ClientApp object is rebuilt for every message, and the simulation engine may hand the
same silo to different worker processes from one message to the next. So a fresh
:class:`~clues.silo.Silo` answers each message: only its records and labels (read-only) are cached
per process, and its state (optimizer moments, scores, kept subset) lives in its work folder.
Any failure on the way (a bad node config, an unreadable silo or labels file, a handler that raises)
becomes an ``error`` reply carrying the error's kind and a public reason only (:mod:`clues.failures`);
the full message stays in the silo's ``silo-errors.log``. Were the exception to escape, Flower would
send its text (which may quote a record id) to the server.

``faults`` is a resilience drill: ``{silo name: rounds}`` makes that silo's ClientApp crash in those
rounds (the exception escapes, as from a dead process), so the server's tolerance can be tested end to end.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from clues.errors import CluesError
from clues.failures import failure_reply
from clues.flower.records import from_records, to_records
from clues.names import check_silo_name


@dataclass(frozen=True)
class SiloSpec:
    name: str
    file: str
    workdir: str
    labels: str | None = None


_DATA: dict[SiloSpec, tuple] = {}


def spec_from_node_config(node_config: Mapping) -> SiloSpec:
    """A deployed SuperNode's silo, from ``--node-config`` (``silo-file`` is required)."""
    if "silo-file" not in node_config:
        raise CluesError("this SuperNode has no silo: start it with --node-config \"silo-file='/path/to/records.jsonl'\"")
    file = Path(str(node_config["silo-file"])).expanduser().resolve()
    if "silo-name" in node_config:
        name = check_silo_name(str(node_config["silo-name"]), "node config silo-name")
    else:
        name = check_silo_name(file.stem, "node config silo-file (its file name is the silo name)")
    workdir = str(node_config.get("workdir") or file.parent / f"{name}-clues")
    labels = node_config.get("labels-file")
    return SiloSpec(name, str(file), workdir, str(labels) if labels else None)


def open_silo(spec: SiloSpec):
    """A :class:`~clues.silo.Silo` for ``spec`` (records and labels read once per process)."""
    from clues.silo import Silo

    if spec not in _DATA:
        from clues.data import load_records

        records = load_records(spec.file)
        labels = corruptions = None
        if spec.labels:
            from clues.metrics import load_labels

            rows = load_labels(spec.labels)
            labels = {r.id: bool(rows[r.id]["clean"]) for r in records if r.id in rows}
            corruptions = {r.id: rows[r.id].get("corruption") for r in records if r.id in rows}
        _DATA[spec] = (records, labels, corruptions)
    records, labels, corruptions = _DATA[spec]
    return Silo(spec.name, records, spec.workdir, labels, corruptions=corruptions)


class FaultDrill(RuntimeError):
    """The drill's simulated crash: it escapes the ClientApp as an unexpected crash would."""


def make_client_app(silos: Sequence[SiloSpec] | None = None, faults: Mapping[str, Sequence[int]] | None = None) -> ClientApp:
    """A ClientApp; ``silos`` for the simulation engine (indexed by partition id), None when deployed."""
    app = ClientApp()
    faults = {name: set(rounds) for name, rounds in (faults or {}).items()}

    def spec_for(context: Context) -> SiloSpec:
        if silos is not None and "silo-file" not in context.node_config:
            return silos[int(context.node_config["partition-id"])]
        return spec_from_node_config(context.node_config)

    def handle(message: Message, context: Context) -> Message:
        request = from_records(message.content)  # the server's request: nothing private in it
        spec = None
        try:
            spec = spec_for(context)
            if request.meta.get("round") in faults.get(spec.name, ()):
                raise FaultDrill(f"fault drill: silo {spec.name} fails in round {request.meta['round']}")
            reply = open_silo(spec).handle(request)
        except FaultDrill:
            raise
        except Exception as exc:  # only the kind and a public reason may leave this silo
            reply = failure_reply(request.kind, exc, spec.name if spec else None, spec.workdir if spec else None)
        return Message(to_records(reply), reply_to=message)

    app.train()(handle)
    for action in ("hello", "score", "select"):
        app.query(action)(handle)
    return app


# The deployment engine's ClientApp (pyproject: clientapp = "clues.flower.client_app:app").
app = make_client_app()
