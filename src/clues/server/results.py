"""What both servers write: the adapters they keep, ``results.json`` and the report.

One place for what merging and federated mode share: a condition's training subset, an adapter
folder in PEFT's format, the per-silo score histograms with the threshold drawn on them, the
scores' public summary in ``results.json``, and the side-by-side comparison of the two modes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping

import torch

# What a silo's scoring reply contributes to results.json (anchor scores stay in the stage markers).
SCORE_KEYS = ("summary", "histogram", "checkpoints", "etas", "auroc", "roc", "by_corruption")
FEDERATED_SCORE_KEYS = ("summary", "histogram", "checkpoints", "auroc", "roc")  # as federated results always had
REFERENCE_SUBSETS = {"mixed": "all", "oracle": "clean"}  # every selection method trains on "kept:<method>"


def subset_of(condition: str) -> str:
    """The records a condition trains on: ``mixed``/``fl-mixed`` all, ``oracle`` the clean ones, a method its kept ones."""
    name = condition.removeprefix("fl-")
    return REFERENCE_SUBSETS.get(name, f"kept:{name}")


def public_scores(per_silo: Mapping[str, dict], keys=SCORE_KEYS) -> dict:
    return {name: {k: s[k] for k in keys if k in s} for name, s in per_silo.items()}


def save_adapter(folder: Path, tensors: Mapping[str, torch.Tensor], adapter_config: dict) -> Path:
    """A PEFT adapter folder: ``adapter_model.safetensors`` and a stable ``adapter_config.json``."""
    from safetensors.torch import save_file

    from clues.checkpoint import write_adapter_config

    folder.mkdir(parents=True, exist_ok=True)
    save_file(dict(tensors), str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    write_adapter_config(folder, adapter_config)
    return folder


def score_data(scores: Mapping[str, dict] | None, tau_of: Callable[[str], float | None]) -> dict | None:
    """Per silo: its score histogram and the threshold it was cut at (the report's histogram plots)."""
    if not scores:
        return None
    return {name: {"histogram": s["histogram"], "tau": tau_of(name)} for name, s in scores.items() if "histogram" in s}


def write_outputs(results: dict, out: str | Path) -> None:
    """results.json and the report (tables, score histograms with tau, per-round curves); wall times in timing.json."""
    from clues.report import write_results

    federated = results.get("federated")
    if federated is not None:
        tau = federated.get("tau")
        plots = score_data((results.get("scores") or {}).get("fl-clues"), lambda _: tau) if tau is not None else None
    else:
        clues = (results.get("selection") or {}).get("clues") or {}
        plots = score_data((results.get("scores") or {}).get("clues"), lambda name: clues[name]["tau"])
    write_results(results, out, plots)


def add_comparison(results: dict, merging: dict) -> dict:
    """Put a merging-mode run's conditions (mixed, clues, oracle...) and selection next to the federated ones."""
    for name, entry in (merging.get("conditions") or {}).items():
        results["conditions"].setdefault(name, entry)
    for method, silos in (merging.get("selection") or {}).items():
        results["selection"].setdefault(method, silos)
    results["compared_with"] = {"config": merging.get("config")}
    return results
