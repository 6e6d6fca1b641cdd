"""A silo: the only holder of its private records.

The server reaches a silo only through :meth:`Silo.handle`, one :class:`~clues.protocol.Message` in,
one out. Requests carry public things (training and scoring settings, the public validation and
anchor records, the threshold); replies carry adapter tensors, counts and summaries, and the scores
of the *public* anchor records. Record text, token ids and record ids stay in the silo's work folder
(its scores and kept subset are written there, for the silo's own use).

Ground-truth labels exist only in simulated benchmarks: when given, the silo computes selection
metrics itself and reports only the aggregates.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from dataclasses import fields, replace
from pathlib import Path
from typing import Mapping

import torch

from clues import checkpoint as ckpt
from clues import protocol
from clues.data import Record, record_from_dict, record_to_json
from clues.failures import SiloError
from clues.histogram import score_histogram
from clues.io import write_json, write_jsonl
from clues.metrics import corruption_metrics, roc_auc, roc_curve, selection_metrics
from clues.protocol import Message
from clues.select import select, select_top, summary
from clues.silo_federated import FederatedSilo
from clues.train import TrainConfig, plan, train



def _config_from(meta: dict, cls):
    known = {f.name for f in fields(cls)}
    values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in meta.items() if k in known}
    return cls(**values)


@contextmanager
def _scoring_progress(console, method: str, total: int | None):
    """A rich bar for a silo's scoring: records done of ``total``, or elapsed time alone when the
    method does not report progress (the baselines). Yields the ``advance(n)`` callback."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = [TextColumn(f"scoring ({method})")]
    columns += [BarColumn(), MofNCompleteColumn(), TextColumn("records")] if total else [SpinnerColumn()]
    with Progress(*columns, TimeElapsedColumn(), console=console, disable=console is None, transient=False) as bar:
        task = bar.add_task("score", total=total)
        yield lambda n: bar.advance(task, n)


def _records_digest(records: list[Record]) -> str:
    digest = hashlib.sha256()
    for record in records:
        digest.update(record.id.encode("utf-8") + b"\x00")
    return digest.hexdigest()[:12]


class Silo(FederatedSilo):
    """One data holder. ``labels`` (id -> clean) only in simulations with known pollution.

    The federated request kinds (hello, fit, fed-score) are answered by :class:`FederatedSilo`;
    select is shared by both modes.
    """

    def __init__(self, name: str, records: list[Record], workdir: str | Path,
                 labels: Mapping[str, bool] | None = None, console=None,
                 corruptions: Mapping[str, str | None] | None = None):
        if not records:
            raise SiloError(f"silo {name!r} has no records")
        self.name = name
        self._records = list(records)
        self._workdir = Path(workdir)
        self._labels = dict(labels) if labels is not None else None
        if self._labels is not None:
            missing = [r.id for r in self._records if r.id not in self._labels]
            if missing:
                raise SiloError(f"silo {name!r}: {len(missing)} records have no label (e.g. {missing[0]!r})",
                               public=f"{len(missing)} of its {len(self._records)} records have no label")
        self._console = console
        # Benchmarks only: each record's corruption type, for per-type metrics (aggregates cross, never a record's type).
        self._corruptions = dict(corruptions) if corruptions is not None and self._labels is not None else None
        self._scores: dict[str, list[float]] = {}  # per selection method
        # {(method, request digest): {set: scores}}: what a fused method's components reuse in one process
        self._totals: dict[tuple[str, str], dict] = {}
        self._kept: dict[str, list[Record]] = {}
        self.domains = tuple(sorted({r.domain for r in self._records if r.domain}))

    def _corruption_list(self) -> list[str | None]:
        return [self._corruptions.get(r.id) for r in self._records]

    @property
    def workdir(self) -> Path:
        """The silo's own folder (scores, kept subset, ``silo-errors.log``); its files never cross."""
        return self._workdir

    # -- the one entry point --------------------------------------------------------------------
    def handle(self, message: Message) -> Message:
        handlers = {protocol.TRAIN: self._train, protocol.SCORE: self._score, protocol.SELECT: self._select}
        if message.kind in handlers:
            return handlers[message.kind](message.meta)
        federated = self.federated_handlers()
        if message.kind in federated:
            return federated[message.kind](message)
        raise SiloError(f"silo {self.name!r} cannot answer a {message.kind!r} message")

    # -- handlers ---------------------------------------------------------------------------------
    def _file(self, stem: str, method: str, suffix: str = ".jsonl") -> Path:
        """``scores.jsonl`` / ``kept.jsonl`` for CLUES (the files `clues select` reads), ``scores-<method>.jsonl`` for baselines."""
        return self._workdir / (f"{stem}{suffix}" if method == "clues" else f"{stem}-{method}{suffix}")

    def _subset(self, which: str) -> list[Record]:
        """``all``, ``clean`` (labels), ``kept`` (CLUES' selection) or ``kept:<method>``."""
        if which == "all":
            return self._records
        if which == "kept" or which.startswith("kept:"):
            method = which.partition(":")[2] or "clues"
            if method not in self._kept:
                kept_file = self._file("kept", method)
                if not kept_file.exists():
                    raise SiloError(f"silo {self.name!r}: no {method} selection yet; score and select first")
                self._kept[method] = self._load_private(kept_file)
            return self._kept[method]
        if which == "clean":
            if self._labels is None:
                raise SiloError("the oracle condition needs labels (--labels)")
            return [r for r in self._records if self._labels[r.id]]
        raise SiloError(f"unknown record subset {which!r}")

    def _load_private(self, path: Path) -> list[Record]:
        with open(path, encoding="utf-8") as handle:
            return [record_from_dict(json.loads(line), str(path), n) for n, line in enumerate(handle, 1) if line.strip()]

    def _run_dir(self, tag: str, records: list[Record], config: TrainConfig) -> Path:
        """One folder per (tag, data, config): a changed subset or config never collides with an old run."""
        key = hashlib.sha256(json.dumps([_records_digest(records), config.to_dict()], sort_keys=True, default=str).encode()).hexdigest()[:10]
        return self._workdir / "runs" / f"{tag}-{key}"

    def _train(self, meta: dict) -> Message:
        config = TrainConfig.from_dict(meta["config"])
        records = self._subset(meta.get("subset", "all"))
        if meta.get("steps_of") == "all" and config.epochs is not None and records:
            # As many optimizer steps as the run on all records: a condition that trained on fewer
            # records must not look worse (or better) for having taken fewer steps.
            config = replace(config, epochs=None, max_steps=plan(len(self._records), config)[1])
        reply = {"tag": meta["tag"], "records": len(records)}
        if not records:
            return Message(protocol.ADAPTER, reply)
        run_dir = self._run_dir(meta["tag"], records, config)
        final = train(config, records, run_dir, console=self._console)
        (self._workdir / "runs" / f"{meta['tag']}.latest").write_text(run_dir.name, encoding="utf-8")
        reply["train_loss"] = json.loads((final / "trainer_meta.json").read_text())["train_loss"]
        reply["adapter_config"] = json.loads((final / "adapter_config.json").read_text())
        tensors = ckpt.load_tensors(final / ckpt.ADAPTER_FILE) if meta.get("return_adapter", True) else {}
        return Message(protocol.ADAPTER, reply, tensors)

    def _warmup_dir(self, run: str) -> Path | None:
        latest = self._workdir / "runs" / f"{run}.latest"
        return self._workdir / "runs" / latest.read_text(encoding="utf-8").strip() if latest.exists() else None

    def _score(self, meta: dict) -> Message:
        """Score own records and the public anchors with ``meta["method"]`` (default CLUES); keep the scores here."""
        from clues.baselines import NEEDS_WARMUP, ScoringInputs, check_methods, score_records
        from clues.scoring.engine import ScoreSettings, score_run

        method = meta.get("method", "clues")
        check_methods([method])
        run_dir = self._warmup_dir(meta.get("run", "mixed"))
        if run_dir is None and method in NEEDS_WARMUP:
            raise SiloError(f"silo {self.name!r}: no training run {meta.get('run', 'mixed')!r} to score with")
        validation = [record_from_dict(r, "validation", n) for n, r in enumerate(meta["validation"], 1)]
        anchors = [record_from_dict(r, "anchor", n) for n, r in enumerate(meta["anchor"], 1)]
        settings = _config_from(meta.get("settings", {}), ScoreSettings)
        if settings.domains is None and self.domains:
            settings = replace(settings, domains=self.domains)
        sets = {"data": self._records, "anchor": anchors}
        request = hashlib.sha256(json.dumps([meta.get("run", "mixed"), meta.get("settings"), meta.get("config"),
                                             meta["validation"], meta["anchor"], str(run_dir)],
                                            sort_keys=True, default=str).encode()).hexdigest()
        known = {m: totals for (m, key), totals in self._totals.items() if key == request}
        reply: dict = {}
        if method in known:
            totals, per_checkpoint = known[method], None
        elif method == "clues":
            total = len(ckpt.list_checkpoints(run_dir)) * (len(validation) + len(self._records) + len(anchors))
            with _scoring_progress(self._console, method, total) as advance:
                result = score_run(run_dir, sets, validation, settings, progress=advance, console=self._console)
            totals = {name: result.total(name) for name in sets}
            per_checkpoint = result.per_checkpoint["data"].tolist()
            reply.update(checkpoints=result.checkpoints, etas=result.etas)
        else:
            train = TrainConfig.from_dict(meta["config"]) if meta.get("config") else TrainConfig()
            inputs = ScoringInputs(base_model=train.model, validation=validation, settings=settings, run_dir=run_dir,
                                   max_length=train.max_length, template=train.template, seed=settings.seed,
                                   console=self._console, known=known)
            with _scoring_progress(self._console, method, None):
                totals = score_records(method, inputs, sets)
            per_checkpoint = None
            self._totals.update({(m, request): t for m, t in known.items()})
        self._totals[(method, request)] = totals
        scores = totals["data"].tolist()
        self._scores[method] = scores
        self._kept.pop(method, None)
        write_jsonl(self._file("scores", method), (
            {"id": r.id, "score": s, **({"per_checkpoint": per_checkpoint[i]} if per_checkpoint else {})}
            for i, (r, s) in enumerate(zip(self._records, scores))
        ))
        clean = [self._labels[r.id] for r in self._records] if self._labels is not None else None
        values = torch.tensor(scores, dtype=torch.float64)
        reply.update({
            "method": method,
            "domains": list(self.domains),  # public labels of the consortium's domains: which anchors are its own
            "anchor_scores": totals["anchor"].tolist(),
            "summary": {
                "count": len(scores),
                "mean": float(values.mean()),
                "std": float(values.std()) if len(scores) > 1 else 0.0,
                "quantiles": {str(q): float(torch.quantile(values, q)) for q in (0.1, 0.25, 0.5, 0.75, 0.9)},
            },
            "histogram": score_histogram(scores, clean),
        })
        if clean is not None:  # benchmarks only: aggregate quality of the ranking, never a record's label
            reply["auroc"] = roc_auc(scores, clean)
            reply["roc"] = roc_curve(scores, clean)
            if self._corruptions is not None:
                reply["by_corruption"] = corruption_metrics(scores, clean, self._corruption_list())
        return Message(protocol.SCORES, reply)

    def _select(self, meta: dict) -> Message:
        """Keep ``score >= tau``, or (``count``) the ``count`` best records; report counts (and metrics with labels)."""
        method = meta.get("method", "clues")
        if method not in self._scores:
            scores_file = self._file("scores", method)
            if not scores_file.exists():
                raise SiloError(f"silo {self.name!r}: no {method} scores yet; score first")
            with open(scores_file, encoding="utf-8") as handle:
                self._scores[method] = [json.loads(line)["score"] for line in handle if line.strip()]
        scores = self._scores[method]
        if meta.get("count") is not None:
            decisions = select_top(scores, int(meta["count"]))
            reply = {"tau": None, "count": int(meta["count"])}
        else:
            tau = float(meta["tau"])
            decisions = select(scores, tau)
            reply = {"tau": tau}
        self._kept[method] = [r for r, keep in zip(self._records, decisions) if keep]
        write_jsonl(self._file("kept", method), (record_to_json(r) for r in self._kept[method]))
        reply.update(summary(decisions))
        if self._labels is not None:
            clean = [self._labels[r.id] for r in self._records]
            reply["clean_total"] = sum(clean)
            reply.update(selection_metrics(decisions, clean))
            reply["auroc"] = roc_auc(scores, clean)
            if self._corruptions is not None:
                reply["by_corruption"] = corruption_metrics(scores, clean, self._corruption_list(), decisions)
        write_json(self._file("selection", method, ".json"), reply)
        return Message(protocol.SELECTION, reply)
