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
``faults`` is a resilience drill: ``{silo name: rounds}`` makes that silo's handler raise in those
rounds, as a crashed silo would, so the server's tolerance can be tested end to end.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from clues.collab.flower.records import from_records, to_records
from clues.errors import CluesError


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
    name = str(node_config.get("silo-name") or file.stem)
    workdir = str(node_config.get("workdir") or file.parent / f"{name}-clues")
    labels = node_config.get("labels-file")
    return SiloSpec(name, str(file), workdir, str(labels) if labels else None)


def open_silo(spec: SiloSpec):
    """A :class:`~clues.silo.Silo` for ``spec`` (records and labels read once per process)."""
    from clues.silo import Silo

    if spec not in _DATA:
        from clues.data import load_records

        records = load_records(spec.file)
        labels = None
        if spec.labels:
            from clues.metrics import load_labels

            rows = load_labels(spec.labels)
            labels = {r.id: bool(rows[r.id]["clean"]) for r in records if r.id in rows}
        _DATA[spec] = (records, labels)
    records, labels = _DATA[spec]
    return Silo(spec.name, records, spec.workdir, labels)


def make_client_app(silos: Sequence[SiloSpec] | None = None, faults: Mapping[str, Sequence[int]] | None = None) -> ClientApp:
    """A ClientApp; ``silos`` for the simulation engine (indexed by partition id), None when deployed."""
    app = ClientApp()
    faults = {name: set(rounds) for name, rounds in (faults or {}).items()}

    def spec_for(context: Context) -> SiloSpec:
        if silos is not None and "silo-file" not in context.node_config:
            return silos[int(context.node_config["partition-id"])]
        return spec_from_node_config(context.node_config)

    def handle(message: Message, context: Context) -> Message:
        spec = spec_for(context)
        request = from_records(message.content)
        if request.meta.get("round") in faults.get(spec.name, ()):
            raise RuntimeError(f"fault drill: silo {spec.name} fails in round {request.meta['round']}")
        reply = open_silo(spec).handle(request)
        return Message(to_records(reply), reply_to=message)

    app.train()(handle)
    for action in ("hello", "score", "select"):
        app.query(action)(handle)
    return app


# The deployment engine's ClientApp (pyproject: clientapp = "clues.collab.flower.client_app:app").
app = make_client_app()
