"""`clues federate`: federated CLUES, on Flower's simulation engine by default (one SuperNode per silo).

Same data flags and config file as `clues run`; the config file may add a ``[federated]`` table
(``rounds``, ``local_steps``, ``score_rounds``, ``fraction_train``, ``round_timeout``, ``seed``),
and the flags below override it. ``--engine deployment`` runs the same job on Flower's deployment
engine on this machine (a SuperLink and one SuperNode per silo, TLS and SuperNode authentication by
default: :mod:`clues.flower.deployment`); ``--fleet local`` runs it with the silos in this process.
A rerun into the same ``--out`` skips the stages that finished (``OUT/.stages``).
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from clues.commands import make_console
from clues.commands.run import config_values
from clues.errors import CluesError
from clues.out_lock import holding

console = make_console()


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
    fleet: str = typer.Option("flower", "--fleet", help="flower (default) or local (the silos in this process, no Flower)."),
    engine: str = typer.Option("simulation", "--engine", help="Flower engine: simulation (default) or deployment (a local SuperLink and one SuperNode per silo)."),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="--engine deployment: seconds for the whole run (default 900)."),
    certs: Optional[Path] = typer.Option(None, "--certs", help="--engine deployment: folder with ca.pem, server.pem, server.key for TLS "
                                         "(default: self-signed ones made for this run; `clues certs` makes a set)."),
    insecure: bool = typer.Option(False, "--insecure", help="--engine deployment: plaintext and no SuperNode authentication (trusted networks only)."),
    drop_overlap: bool = typer.Option(False, "--drop-overlap", help="Each silo leaves out its records that copy a public validation, anchor or test record (exactly or within one word) before anything trains."),
) -> None:
    """Warm-up FedAvg with scoring at the global model -> threshold -> selection -> FedAvg on kept data."""
    from clues.model.loading import check_model
    from clues.report import print_summary

    if fleet not in ("flower", "local"):
        raise CluesError(f"--fleet {fleet!r}: choose flower or local")
    if engine not in ("simulation", "deployment"):
        raise CluesError(f"--engine {engine!r}: choose simulation or deployment")
    if fleet == "local" and engine != "simulation":
        raise CluesError("--engine is Flower's: it does not go with --fleet local")
    if engine != "deployment" and (timeout is not None or certs is not None or insecure):
        raise CluesError("--timeout, --certs and --insecure are options of --engine deployment")
    if timeout is not None and not timeout > 0:
        raise CluesError(f"--timeout {timeout}: give a positive number of seconds")
    config, fed = federate_values(config_file, silo, validation, anchor, test, labels, model, lr, precondition, threshold,
                                  rounds, local_steps, score_rounds, fraction_train, out, drop_overlap)
    check_model(config.model)
    merging = None
    if compare is not None:  # read before the run: a broken file must not cost a whole federation
        import json

        try:
            merging = json.loads(compare.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CluesError(f"--compare {compare}: {exc}") from None
        if not isinstance(merging, dict) or not isinstance(merging.get("conditions"), dict):
            raise CluesError(f"--compare {compare}: not a results.json of `clues run` (no 'conditions' table)")
    with holding(config.out):  # one run per output folder
        results = run_federated(config, fed, fleet, engine, timeout=900.0 if timeout is None else timeout,
                                certs=certs, insecure=insecure)
        if merging is not None:
            from clues.server.results import add_comparison, write_outputs

            results = add_comparison(results, merging)
            write_outputs(results, config.out)
    print_summary(results, console)
    console.print(f"\nresults: {Path(config.out) / 'results.json'}  report: {Path(config.out) / 'report.html'}")
    for line in results.get("warnings") or ():
        console.print(f"warning: {line}", style="yellow", markup=False, highlight=False)
    if (results.get("federated") or {}).get("failures"):
        raise typer.Exit(PARTIAL)


PARTIAL = 3  # exit status of a federation that finished without every silo's replies (its report says which)


def run_federated(config, fed, fleet: str = "flower", engine: str = "simulation", **deployment) -> dict:
    """The federated job on the chosen fleet; ``deployment``: ``timeout``, ``certs``, ``insecure`` of the deployment engine."""
    if fleet == "local":
        from clues.server.federated import FederatedServer
        from clues.server.fleet import open_local_fleet

        return FederatedServer(config, fed, open_local_fleet(config, console), console).run()
    if engine == "deployment":
        from clues.flower.deployment import deploy

        return deploy(config, fed, say=lambda text: console.print(text, markup=False, highlight=False), **deployment)
    from clues.flower.simulation import simulate

    return simulate(config, fed, console)


def federate_values(config_file, silo, validation, anchor, test, labels, model, lr, precondition, threshold,
                    rounds, local_steps, score_rounds, fraction_train, out, drop_overlap=False):
    """``(RunConfig, FedSettings)`` from the config file and the flags."""
    from clues.config import FEDERATED_SCORE_DEFAULTS, FedSettings, fed_settings, make_config

    values = config_values(
        config_file, silo,
        {"validation": validation, "anchor": anchor, "test": test, "labels": labels, "model": model, "out": out},
        {"train": {"lr": lr}, "score": {"precondition": precondition}, "select": {"policy": threshold}},
        # federated defaults: plain-gradient scores, its own output folder
        defaults={"out": "clues-federated", "score": FEDERATED_SCORE_DEFAULTS},
    )
    if drop_overlap:
        values["drop_overlap"] = True
    fed_values = values.pop("federated", {}) or {}
    if score_rounds is not None:
        try:
            fed_values["score_rounds"] = [int(r) for r in score_rounds.split(",") if r.strip()]
        except ValueError:
            raise CluesError(f"--score-rounds {score_rounds!r}: expected comma-separated round numbers") from None
    given = {"rounds": rounds, "local_steps": local_steps, "fraction_train": fraction_train,
             "score_rounds": tuple(fed_values["score_rounds"]) if score_rounds is not None else None}
    given = {key: value for key, value in given.items() if value is not None}
    total = given.get("rounds", fed_values.get("rounds"))
    for key, value in given.items():  # a flag's value checked on its own: the error names the flag, not the file
        context = {"rounds": total} if key == "score_rounds" and isinstance(total, int) and total >= 1 else {}
        try:
            FedSettings(**{**context, key: value})
        except CluesError as exc:
            raise CluesError(f"--{key.replace('_', '-')} {score_rounds if key == 'score_rounds' else value}: {exc}") from None
        fed_values[key] = value
    fed = fed_settings(fed_values, values.get("_source", "config"))
    return make_config(values), fed


def certs(
    out: Path = typer.Option(..., "--out", help="Folder for ca.pem, ca.key, server.pem, server.key (and <silo>.key/.pub)."),
    host: List[str] = typer.Option([], "--host", help="Host name or IP address the SuperNodes use to reach the SuperLink "
                                   "(repeatable; localhost and 127.0.0.1 are always included)."),
    silo: List[str] = typer.Option([], "--silo", help="Silo name: also make that SuperNode's authentication key pair (repeatable)."),
    days: int = typer.Option(30, "--days", help="Validity of the certificates in days (a trial, not production)."),
) -> None:
    """Self-signed TLS certificates (and SuperNode key pairs) for a trial federation on Flower."""
    from clues.flower.certs import make_certificates, make_node_keys, node_key_paths

    try:
        import cryptography  # noqa: F401  (installed with Flower)
    except ImportError:
        raise CluesError("clues certs needs the 'cryptography' package, which comes with Flower: "
                         "pip install -e '.[federated]'") from None

    node_key_paths(out, silo)  # every --silo checked before the first file is written
    paths = make_certificates(out, host, days)
    keys = make_node_keys(out, silo)
    console.print(f"TLS: {paths['ca.pem']} (give it to every SuperNode and to `flwr`), {paths['server.pem']} and "
                  f"{paths['server.key']} (the SuperLink's); keep {paths['ca.key']} private")
    for name, (private, public) in keys.items():
        console.print(f"silo {name}: {private} (its SuperNode's --auth-supernode-private-key), {public} (flwr supernode register)")

