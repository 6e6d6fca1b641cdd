"""`clues federate`: federated CLUES on Flower's simulation engine (one SuperNode per silo).

Same data flags and config file as `clues run`; the config file may add a ``[federated]`` table
(``rounds``, ``local_steps``, ``score_rounds``, ``fraction_train``, ``round_timeout``, ``seed``),
and the flags below override it.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from clues.commands import make_console
from clues.commands.run import config_values
from clues.errors import CluesError

console = make_console()
# Federated scoring defaults to plain gradients: the global model's Adam moments live in the silos.
FEDERATED_SCORE_DEFAULTS = {"precondition": "none", "w_other": 1.0}


def federate(
    config_file: Optional[Path] = typer.Option(None, "--config", help="TOML file (as for clues run, plus a [federated] table)."),
    silo: List[str] = typer.Option([], "--silo", help="NAME=FILE, one per silo (repeatable)."),
    validation: Optional[Path] = typer.Option(None, "--validation", help="Public high-quality validation records."),
    anchor: Optional[Path] = typer.Option(None, "--anchor", help="Public anchor records (sets the threshold)."),
    test: Optional[Path] = typer.Option(None, "--test", help="Public held-out test records (with domain)."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="labels.jsonl of a benchmark: selection metrics and fl-oracle."),
    model: Optional[str] = typer.Option(None, "--model", help="'default', 'smollm2-135m' or a local Hugging Face folder."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate of the local steps."),
    precondition: Optional[str] = typer.Option(None, "--precondition", help="none (default here) or adam (each silo's own moments)."),
    threshold: Optional[str] = typer.Option(None, "--threshold", help="conformal:0.1 (default: the k-th lowest own-domain anchor, expected clean recall >= 90%), mean (the paper) or quantile:q of the anchor scores."),
    rounds: Optional[int] = typer.Option(None, "--rounds", help="FedAvg rounds per condition (default 10)."),
    local_steps: Optional[int] = typer.Option(None, "--local-steps", help="Local optimizer steps per round (default 5)."),
    score_rounds: Optional[str] = typer.Option(None, "--score-rounds", help="Comma-separated warm-up rounds to score at (default: 3 spread)."),
    fraction_train: Optional[float] = typer.Option(None, "--fraction-train", help="Share of silos sampled per round (default 1.0)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default clues-federated)."),
    compare: Optional[Path] = typer.Option(None, "--compare", help="results.json of a merging run (clues run/demo) on the same data: report both side by side."),
) -> None:
    """Warm-up FedAvg with scoring at the global model -> threshold -> selection -> FedAvg on kept data."""
    from clues.flower.simulation import run_federated_simulation
    from clues.report import print_summary

    config, fed = federate_values(config_file, silo, validation, anchor, test, labels, model, lr, precondition, threshold,
                                  rounds, local_steps, score_rounds, fraction_train, out)
    results = run_federated_simulation(config, fed, console)
    if compare is not None:
        import json

        from clues.federated import add_comparison, write_outputs

        try:
            merging = json.loads(compare.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CluesError(f"--compare {compare}: {exc}") from None
        results = add_comparison(results, merging)
        write_outputs(results, config.out)
    print_summary(results, console)
    console.print(f"\nresults: {Path(config.out) / 'results.json'}  report: {Path(config.out) / 'report.html'}")


def federate_values(config_file, silo, validation, anchor, test, labels, model, lr, precondition, threshold,
                    rounds, local_steps, score_rounds, fraction_train, out):
    """``(RunConfig, FedSettings)`` from the config file and the flags (shared with the deploy tool)."""
    from clues.config import make_config

    values = config_values(
        config_file, silo,
        {"validation": validation, "anchor": anchor, "test": test, "labels": labels, "model": model, "out": out},
        {"train": {"lr": lr}, "score": {"precondition": precondition}, "select": {"policy": threshold}},
        # federated defaults: plain-gradient scores, its own output folder
        defaults={"out": "clues-federated", "score": FEDERATED_SCORE_DEFAULTS},
    )
    fed_values = values.pop("federated", {}) or {}
    if score_rounds is not None:
        try:
            fed_values["score_rounds"] = [int(r) for r in score_rounds.split(",") if r.strip()]
        except ValueError:
            raise CluesError(f"--score-rounds {score_rounds!r}: expected comma-separated round numbers") from None
    for key, value in {"rounds": rounds, "local_steps": local_steps, "fraction_train": fraction_train}.items():
        if value is not None:
            fed_values[key] = value
    return make_config(values), fed_settings(fed_values)


def fed_settings(fed_values: dict):
    """:class:`FedSettings` from a ``[federated]`` table (TOML lists become tuples); unknown keys name the table."""
    from clues.federated import FedSettings

    fed_values = dict(fed_values)
    if isinstance(fed_values.get("score_rounds"), list):  # anything else is refused by FedSettings' type check
        fed_values["score_rounds"] = tuple(fed_values["score_rounds"])
    try:
        return FedSettings(**fed_values)
    except (TypeError, CluesError) as exc:
        raise CluesError(f"[federated]: {exc}") from None


def certs(
    out: Path = typer.Option(..., "--out", help="Folder for ca.pem, ca.key, server.pem, server.key (and <silo>.key/.pub)."),
    host: List[str] = typer.Option([], "--host", help="Host name or IP address the SuperNodes use to reach the SuperLink "
                                   "(repeatable; localhost and 127.0.0.1 are always included)."),
    silo: List[str] = typer.Option([], "--silo", help="Silo name: also make that SuperNode's authentication key pair (repeatable)."),
    days: int = typer.Option(30, "--days", help="Validity of the certificates in days (a trial, not production)."),
) -> None:
    """Self-signed TLS certificates (and SuperNode key pairs) for a trial federation on Flower."""
    from clues.flower.certs import make_certificates, make_node_keys
    from clues.names import check_silo_name

    try:
        import cryptography  # noqa: F401  (installed with Flower)
    except ImportError:
        raise CluesError("clues certs needs the 'cryptography' package, which comes with Flower: "
                         "pip install -e '.[federated]'") from None

    names = [check_silo_name(name, "--silo") for name in silo]
    paths = make_certificates(out, host, days)
    keys = make_node_keys(out, names)
    console.print(f"TLS: {paths['ca.pem']} (give it to every SuperNode and to `flwr`), {paths['server.pem']} and "
                  f"{paths['server.key']} (the SuperLink's); keep {paths['ca.key']} private")
    for name, (private, public) in keys.items():
        console.print(f"silo {name}: {private} (its SuperNode's --auth-supernode-private-key), {public} (flwr supernode register)")

