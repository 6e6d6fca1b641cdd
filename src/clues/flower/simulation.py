"""A clues run on Flower's simulation engine, one virtual SuperNode per silo.

``clues federate`` (federated mode) and ``clues run --fleet flower`` (merging mode) run here: the
silos as ClientApps in Ray actors (one CPU each, no GPU: small enough for a laptop), the server in
this process. Silo work folders are ``OUT/silos/<name>``, as with in-process silos, so both fleets
leave the same files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

from rich.console import Console

from clues.errors import CluesError


def backend_config(cpus_per_silo: float = 1.0) -> dict:
    cpus = os.cpu_count() or 1
    return {
        "client_resources": {"num_cpus": cpus_per_silo, "num_gpus": 0.0},
        "init_args": {"num_cpus": max(1, min(cpus, 4)), "num_gpus": 0, "include_dashboard": False},
    }


def simulate(config, fed=None, console: Console | None = None, tap=None,
             faults: Mapping[str, Sequence[int]] | None = None) -> dict:
    """Run the job (federated with ``fed``, merging mode without); return the results written to ``OUT/results.json``."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    from flwr.simulation import run_simulation

    from clues.data import load_many
    from clues.flower.client_app import SiloSpec, make_client_app
    from clues.flower.server_app import make_server_app

    load_many(config.silos.values())  # every problem with the silo files reported before anything starts
    out = Path(config.out)
    specs = [SiloSpec(name, str(Path(path).resolve()), str((out / "silos" / name).resolve()), config.labels)
             for name, path in config.silos.items()]
    holder: dict = {}
    server = make_server_app(config, fed, len(specs), holder, tap, console)
    run_simulation(server, make_client_app(specs, faults), num_supernodes=len(specs), backend_config=backend_config())
    if "error" in holder:
        raise holder["error"]
    if "results" not in holder:
        raise CluesError("the Flower simulation ended without results (see the Flower log above)")
    return holder["results"]
