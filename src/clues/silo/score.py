"""``score``: score own records and the public anchors with a selection method; keep the scores here.

CLUES scores on the checkpoints of the silo's ``mixed`` run against the public validation
gradient; the baselines (:mod:`clues.baselines`) score with their own rule, inside the silo too.
Per-record scores go to ``scores[-<method>].jsonl`` in the work folder; the reply carries the
anchors' scores (public records) and a summary (:mod:`clues.silo.summary`).
"""

from __future__ import annotations

import hashlib
import math
import json
from contextlib import contextmanager
from dataclasses import fields, replace

from clues import checkpoint as ckpt
from clues import protocol
from clues.data import record_from_dict
from clues.failures import SiloError
from clues.io import write_jsonl
from clues.protocol import Message
from clues.silo.summary import score_report
from clues.silo.train import latest_run


def settings_from(meta: dict, cls):
    """A settings dataclass from a request's JSON (lists back to tuples, unknown keys ignored)."""
    known = {f.name for f in fields(cls)}
    return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in meta.items() if k in known})


@contextmanager
def _progress(console, method: str, total: int | None):
    """A rich bar for a silo's scoring: records done of ``total``, or elapsed time alone when the
    method does not report progress (the baselines). Yields the ``advance(n)`` callback."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    columns = [TextColumn(f"scoring ({method})")]
    columns += [BarColumn(), MofNCompleteColumn(), TextColumn("records")] if total else [SpinnerColumn()]
    with Progress(*columns, TimeElapsedColumn(), console=console, disable=console is None, transient=False) as bar:
        task = bar.add_task("score", total=total)
        yield lambda n: bar.advance(task, n)


def answer(silo, message: Message) -> Message:
    from clues.baselines import ScoringInputs, check_methods, score_records
    from clues.methods import NEEDS_WARMUP
    from clues.scoring.engine import ScoreSettings, score_run
    from clues.train import TrainConfig

    meta = message.meta
    method = meta.get("method", "clues")
    check_methods([method])
    run_dir = latest_run(silo, meta.get("run", "mixed"))
    if run_dir is None and method in NEEDS_WARMUP:
        raise SiloError(f"silo {silo.name!r}: no training run {meta.get('run', 'mixed')!r} to score with")
    validation = [record_from_dict(r, "validation", n) for n, r in enumerate(meta["validation"], 1)]
    anchors = [record_from_dict(r, "anchor", n) for n, r in enumerate(meta["anchor"], 1)]
    settings = settings_from(meta.get("settings", {}), ScoreSettings)
    if settings.domains is None and silo.domains:
        settings = replace(settings, domains=silo.domains)
    sets = {"data": silo.records, "anchor": anchors}
    request = hashlib.sha256(json.dumps([meta.get("run", "mixed"), meta.get("settings"), meta.get("config"),
                                         meta["validation"], meta["anchor"], str(run_dir)],
                                        sort_keys=True, default=str).encode()).hexdigest()
    known = {m: totals for (m, key), totals in silo.totals.items() if key == request}
    reply: dict = {}
    if method in known:
        totals, per_checkpoint = known[method], None
    elif method == "clues":
        total = len(ckpt.list_checkpoints(run_dir)) * (len(validation) + len(silo.records) + len(anchors))
        with _progress(silo.console, method, total) as advance:
            result = score_run(run_dir, sets, validation, settings, progress=advance, console=silo.console)
        totals = {name: result.total(name) for name in sets}
        per_checkpoint = result.per_checkpoint["data"].tolist()
        reply.update(checkpoints=result.checkpoints, etas=result.etas)
    else:
        train = TrainConfig.from_dict(meta["config"]) if meta.get("config") else TrainConfig()
        inputs = ScoringInputs(base_model=train.model, validation=validation, settings=settings, run_dir=run_dir,
                               max_length=train.max_length, template=train.template, seed=settings.seed,
                               console=silo.console, known=known)
        with _progress(silo.console, method, None):
            totals = score_records(method, inputs, sets)
        per_checkpoint = None
        silo.totals.update({(m, request): t for m, t in known.items()})
    silo.totals[(method, request)] = totals
    scores = totals["data"].tolist()
    check_ranking(silo.name, method, scores)
    silo.scores[method] = scores
    silo.kept.pop(method, None)
    write_jsonl(silo.file("scores", method), (
        {"id": r.id, "score": s, **({"per_checkpoint": per_checkpoint[i]} if per_checkpoint else {})}
        for i, (r, s) in enumerate(zip(silo.records, scores))
    ))
    # domains: public labels of the consortium's domains, which anchors are its own
    reply.update(method=method, domains=list(silo.domains), anchor_scores=totals["anchor"].tolist())
    reply.update(score_report(scores, silo.clean(), silo.corruption_list()))
    return Message(protocol.SCORES, reply)


def check_ranking(silo: str, method: str, scores: list[float]) -> None:
    """Refuse a score that cannot rank: every record scored the same, or none scored a number. A run
    whose training diverged gives every gradient 0, so CLUES scores every record 0.0 and any threshold
    keeps all or nothing; selecting on it would look like a result. (A few NaN scores are allowed: a
    NaN score is never kept.) The message is fixed words, a count and names: it may cross."""
    finite = [s for s in scores if math.isfinite(s)]
    if len(scores) > 1 and (not finite or max(finite) == min(finite)):
        raise SiloError(f"silo {silo!r}: {method} gave all {len(scores)} records the same score (or none), so it cannot "
                        "rank them: the training run probably diverged or did not move (check the learning rate)")
