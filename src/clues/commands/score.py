"""`clues score` and `clues select`: the CLUES score of a silo's records, the anchor threshold, the kept subset."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from clues.data.records import load_records, record_to_json
from clues.errors import CluesError
from clues.io import write_json, write_jsonl

console = Console()


def score(
    run: Path = typer.Option(..., "--run", help="Training run folder holding checkpoint-<step>/ subfolders."),
    data: Path = typer.Option(..., "--data", help="The silo's records to score (JSONL/JSON)."),
    validation: Path = typer.Option(..., "--validation", help="Public high-quality validation records."),
    anchor: Path = typer.Option(..., "--anchor", help="Public anchor records, scored like the data to set tau."),
    out: Path = typer.Option(..., "--out", help="Output folder: scores.jsonl, anchor_scores.jsonl, threshold.json, score_meta.json, timing.json."),
    precondition: str = typer.Option("adam", "--precondition", help="adam (one Adam step from the checkpoint's moments), none, sqrtv."),
    params: str = typer.Option("all", "--params", help="all, q, v, lora_A, lora_B, first-layer, last-layer, or a regex over parameter names."),
    project: Optional[int] = typer.Option(None, "--project", help="Seeded Rademacher projection to DIM dimensions (both sides)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the projection."),
    batch_size: int = typer.Option(8, "--batch-size", help="Records per forward/backward."),
    w_other: float = typer.Option(1.0, "--w-other", help="Weight of validation domains other than the silo's own."),
    domain: Optional[List[str]] = typer.Option(None, "--domain", help="The silo's own domain(s); default: the domains of --data."),
    threshold_policy: str = typer.Option("mean", "--threshold", help="tau from the anchor scores: mean (the paper), quantile:q or conformal:alpha (the k-th lowest anchor; expected clean recall >= 1 - alpha)."),
    model: Optional[str] = typer.Option(None, "--model", help="Base model, if not the one recorded in the checkpoints."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda[:N]."),
) -> None:
    """Score every record of --data (and the anchors, identically) on every checkpoint of --run."""
    from clues.scoring.engine import ScoreSettings, score_run
    from clues.select import parse_policy, threshold

    policy = parse_policy(threshold_policy)
    settings = ScoreSettings(precondition=precondition, params=params, project=project, seed=seed,
                             batch_size=batch_size, w_other=w_other, domains=tuple(domain) if domain else None,
                             device=device)
    records = load_records(data)
    validation_records = load_records(validation)
    anchors = load_records(anchor)
    from clues import checkpoint as ckpt

    checkpoints = ckpt.list_checkpoints(run)
    if not checkpoints:
        raise CluesError(f"{run}: no complete checkpoint (checkpoint-<step>/ with trainer_meta.json) to score with")
    total = len(checkpoints) * (len(records) + len(validation_records) + len(anchors))
    started = time.perf_counter()
    with Progress(TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TextColumn("records"),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False) as bar:
        task = bar.add_task("score", total=total)
        result = score_run(run, {"data": records, "anchor": anchors}, validation_records, settings,
                           base_model=model, progress=lambda n: bar.advance(task, n), console=console)
    elapsed = time.perf_counter() - started

    def rows(recs, name):
        per = result.per_checkpoint[name].tolist()
        return ({"id": r.id, "score": sum(p), "per_checkpoint": p} for r, p in zip(recs, per))

    write_jsonl(out / "scores.jsonl", rows(records, "data"))
    write_jsonl(out / "anchor_scores.jsonl", rows(anchors, "anchor"))
    anchor_scores = result.total("anchor").tolist()
    tau = threshold(anchor_scores, policy)
    write_json(out / "threshold.json", {"tau": tau, "policy": str(policy), "anchors": len(anchors)})
    write_json(out / "score_meta.json", {
        "run": str(Path(run).resolve()), "checkpoints": result.checkpoints, "etas": result.etas,
        "precondition": precondition, "params": params, "project": project, "seed": seed,
        "w_other": w_other, "domains": list(domain) if domain else None, "records": len(records),
        "validation": len(validation_records), "anchors": len(anchors),
    })
    write_json(out / "timing.json", {"seconds": round(elapsed, 3)})  # apart, so a rerun rewrites the rest byte for byte
    kept = sum(1 for s in result.total("data").tolist() if s >= tau)
    console.print(f"scored {len(records)} records and {len(anchors)} anchors on {len(checkpoints)} checkpoint(s) "
                  f"in {elapsed:.1f}s; tau ({policy}) = {tau:.6g}; {kept}/{len(records)} records at or above tau")
    console.print(f"wrote {out}/scores.jsonl, anchor_scores.jsonl, threshold.json, score_meta.json, timing.json")


def _score_rows(path: Path) -> list[tuple[str, float]]:
    """``(id, score)`` of every row of a scores file (``clues score`` output); a malformed row names FILE:LINE."""
    from clues.io import read_rows

    pairs = []
    for number, row in read_rows(path, "a scores file (one {\"id\": ..., \"score\": ...} per line)"):
        for field, ok in (("id", isinstance(row.get("id"), str)),
                          ("score", isinstance(row.get("score"), (int, float)) and not isinstance(row.get("score"), bool))):
            if not ok:
                raise CluesError(f"{path}:{number}: {field}: a score row needs a string 'id' and a numeric 'score'")
        pairs.append((row["id"], float(row["score"])))
    return pairs


def select(
    data: Path = typer.Option(..., "--data", help="The records that were scored (JSONL/JSON)."),
    scores: Path = typer.Option(..., "--scores", help="scores.jsonl written by `clues score`."),
    out: Path = typer.Option(..., "--out", help="Where to write the kept records (JSONL, original fields untouched)."),
    threshold_file: Optional[Path] = typer.Option(None, "--threshold-file", help="threshold.json with tau."),
    tau: Optional[float] = typer.Option(None, "--tau", help="The threshold itself."),
    anchor_scores: Optional[List[Path]] = typer.Option(None, "--anchor-scores", help="anchor_scores.jsonl file(s): tau from all of them pooled (the global threshold)."),
    threshold_policy: str = typer.Option("mean", "--threshold", help="Policy with --anchor-scores: mean, quantile:q or conformal:alpha."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="labels.jsonl: also print precision/recall/F1/accuracy/AUROC."),
) -> None:
    """Keep the records whose score is at least tau; print kept/total."""
    import json

    from clues.select import select as keep
    from clues.select import summary, threshold

    given = sum(x is not None and x != [] for x in (threshold_file, tau, anchor_scores))
    if given != 1:
        raise CluesError("give exactly one of --threshold-file, --tau, --anchor-scores")
    if threshold_file is not None:
        try:
            tau = float(json.loads(Path(threshold_file).read_text(encoding="utf-8"))["tau"])
        except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
            raise CluesError(f"{threshold_file}: not a threshold file with a numeric 'tau' ({exc})") from exc
    elif anchor_scores:
        tau = threshold([score for path in anchor_scores for _, score in _score_rows(path)], threshold_policy)
    if not math.isfinite(tau):
        where = f"{threshold_file}: tau" if threshold_file is not None else "--tau"
        raise CluesError(f"{where} must be a finite number, got {tau}: with it no record, or every record, would be kept")
    records = load_records(data)
    by_id = dict(_score_rows(scores))
    missing = [r.id for r in records if r.id not in by_id]
    if missing:
        raise CluesError(f"{scores} has no score for {len(missing)} record(s) of {data} (e.g. {missing[0]!r}); "
                         "were they scored from this file?")
    decisions = keep([by_id[r.id] for r in records], tau)
    report = None
    if labels is not None:  # before anything is written: a broken labels file leaves no output behind
        from clues.metrics import evaluate, load_labels

        report = evaluate(load_labels(labels), scores={r.id: by_id[r.id] for r in records},
                          decisions={r.id: d for r, d in zip(records, decisions)})["overall"]
    write_jsonl(out, (record_to_json(r) for r, d in zip(records, decisions) if d))
    counts = summary(decisions)
    console.print(f"kept {counts['kept']}/{counts['total']} records ({counts['kept_ratio']:.1%}) with tau = {tau:.6g}; wrote {out}")
    if report is not None:
        fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
        console.print("precision {} recall {} f1 {} accuracy {} auroc {}".format(
            *(fmt(report[k]) for k in ("precision", "recall", "f1", "accuracy", "auroc"))))
