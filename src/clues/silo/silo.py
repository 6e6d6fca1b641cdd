"""The one silo: the only holder of its private records, reached through :meth:`Silo.handle`.

One :class:`~clues.protocol.Message` in, one out. Each request kind has its own handler module
(``hello``, ``train``, ``score``, ``select`` for merging mode; ``fit`` and ``fed_score`` for
federated mode), a function of the silo and the request; :class:`Silo` itself only holds the
records, the labels of a benchmark, the work folder, and the scores and kept subsets of the
selection methods run so far. Requests carry public things (settings, the public validation and
anchor records, the threshold, the global adapter); replies carry adapter tensors, counts and
summaries, and the scores of the *public* anchor records. Record text, token ids and record ids
stay in the work folder (scores and kept subsets are written there, for the silo's own use).

Ground-truth labels exist only in simulated benchmarks: when given, the silo computes selection
metrics itself and reports only the aggregates.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

from clues import protocol
from clues.data import Record, record_from_dict
from clues.io import write_json
from clues.failures import SiloError
from clues.protocol import Message
from clues.silo import fed_score, fit, hello, score, select, train

HANDLERS = {
    protocol.HELLO: hello.answer,
    protocol.TRAIN: train.answer,
    protocol.SCORE: score.answer,
    protocol.SELECT: select.answer,
    protocol.FIT: fit.answer,
    protocol.FED_SCORE: fed_score.answer,
}


class Silo:
    """One data holder. ``labels`` (id -> clean) only in simulations with known pollution."""

    def __init__(self, name: str, records: list[Record], workdir: str | Path,
                 labels: Mapping[str, bool] | None = None, console=None,
                 corruptions: Mapping[str, str | None] | None = None):
        if not records:
            raise SiloError(f"silo {name!r} has no records")
        self.name = name
        self.all_records = list(records)
        self.workdir = Path(workdir)  # scores, kept subsets, silo-errors.log: its files never cross
        self.leave_out(self._dropped_ids())  # sets records and domains: all of them, or those --drop-overlap left
        self.labels = dict(labels) if labels is not None else None
        if self.labels is not None:
            missing = [r.id for r in self.all_records if r.id not in self.labels]  # the whole file, as read
            if missing:
                raise SiloError(f"silo {name!r}: {len(missing)} records have no label (e.g. {missing[0]!r})",
                                public=f"{len(missing)} of its {len(self.all_records)} records have no label")
        self.console = console
        # Benchmarks only: each record's corruption type, for per-type metrics (aggregates cross, never a record's type).
        self.corruptions = dict(corruptions) if corruptions is not None and self.labels is not None else None
        self.scores: dict[str, list[float]] = {}  # per selection method
        # {(method, request digest): {set: scores}}: what a fused method's components reuse in one process
        self.totals: dict[tuple[str, str], dict] = {}
        self.kept: dict[str, list[Record]] = {}

    # -- --drop-overlap: records left out, remembered in the work folder -------------------------------
    DROPPED = "dropped-overlap.json"

    def _dropped_ids(self) -> set[str]:
        path = self.workdir / self.DROPPED
        return set(json.loads(path.read_text(encoding="utf-8"))["ids"]) if path.exists() else set()

    def leave_out(self, ids: set[str]) -> None:
        """Train, score and select on every record but ``ids`` (none: all of them again). Each process
        of a Flower deployment builds its silo afresh, so the list is kept in the work folder."""
        path = self.workdir / self.DROPPED
        if ids:
            self.workdir.mkdir(parents=True, exist_ok=True)
            write_json(path, {"ids": sorted(ids)})
        elif path.exists():
            path.unlink()
        self.records = [r for r in self.all_records if r.id not in ids]
        if not self.records:
            raise SiloError(f"silo {self.name!r}: every record copies a public record; nothing is left to train on")
        self.domains = tuple(sorted({r.domain for r in self.records if r.domain}))

    # -- the one entry point --------------------------------------------------------------------
    def handle(self, message: Message) -> Message:
        handler = HANDLERS.get(message.kind)
        if handler is None:
            raise SiloError(f"silo {self.name!r} cannot answer a {message.kind!r} message")
        return handler(self, message)

    # -- what the handlers share ------------------------------------------------------------------
    def clean(self) -> list[bool] | None:
        """Each record's label, in record order (benchmarks only)."""
        return [self.labels[r.id] for r in self.records] if self.labels is not None else None

    def corruption_list(self) -> list[str | None] | None:
        return [self.corruptions.get(r.id) for r in self.records] if self.corruptions is not None else None

    def file(self, stem: str, method: str, suffix: str = ".jsonl") -> Path:
        """``scores.jsonl`` / ``kept.jsonl`` for CLUES (the files `clues select` reads), ``scores-<method>.jsonl`` for baselines."""
        return self.workdir / (f"{stem}{suffix}" if method == "clues" else f"{stem}-{method}{suffix}")

    def subset(self, which: str) -> list[Record]:
        """``all``, ``clean`` (labels), ``kept`` (CLUES' selection) or ``kept:<method>``."""
        if which == "all":
            return self.records
        if which == "kept" or which.startswith("kept:"):
            method = which.partition(":")[2] or "clues"
            if method not in self.kept:
                kept_file = self.file("kept", method)
                if not kept_file.exists():
                    raise SiloError(f"silo {self.name!r}: no {method} selection yet; score and select first")
                self.kept[method] = self._load_private(kept_file)
            return self.kept[method]
        if which == "clean":
            if self.labels is None:
                raise SiloError("the oracle condition needs labels (--labels)")
            return [r for r in self.records if self.labels[r.id]]
        raise SiloError(f"unknown record subset {which!r}")

    def method_scores(self, method: str) -> list[float]:
        """The scores of ``method`` (from this process, else from the silo's scores file)."""
        if method not in self.scores:
            scores_file = self.file("scores", method)
            if not scores_file.exists():
                raise SiloError(f"silo {self.name!r}: no {method} scores yet; score first")
            with open(scores_file, encoding="utf-8") as handle:
                self.scores[method] = [json.loads(line)["score"] for line in handle if line.strip()]
        return self.scores[method]

    def _load_private(self, path: Path) -> list[Record]:
        with open(path, encoding="utf-8") as handle:
            return [record_from_dict(json.loads(line), str(path), n) for n, line in enumerate(handle, 1) if line.strip()]
