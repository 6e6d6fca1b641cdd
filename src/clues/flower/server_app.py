"""The Flower ServerApp: a clues server with the Grid as its fleet (:class:`~clues.flower.grid.GridFleet`).

Which server runs is the job's: :class:`~clues.server.federated.FederatedServer` (``clues federate``,
``fed`` given) or :class:`~clues.server.merging.MergingServer` (``clues run --fleet flower``). The
simulation engine builds the app in-process with :func:`make_server_app`; the deployment engine
loads ``app`` below, which reads its job (run config + federated settings, a JSON file written by
:mod:`clues.flower.deployment`) from the run config key ``job``.
"""

from __future__ import annotations

import json
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from rich.console import Console

from clues.errors import CluesError
from clues.flower.grid import GridFleet
from clues.protocol import BoundaryLog, Tap

# Merging mode trains whole runs inside one request: no per-round timeout, only a very long one.
MERGING_TIMEOUT = 7 * 24 * 3600.0


def run_job(grid: Grid, config, fed, expected: int, tap: Tap | None = None, console: Console | None = None) -> dict:
    """One clues run on ``grid`` (federated with ``fed``, merging mode without): what both engines' ServerApps do."""
    from clues.server.fleet import LOG_NAME

    console = console or Console()
    log = BoundaryLog(Path(config.out) / LOG_NAME, tap)
    fleet = GridFleet(grid, expected, log, fed.round_timeout if fed is not None else MERGING_TIMEOUT, console)
    if fed is None:
        from clues.server.merging import MergingServer

        return MergingServer(config, fleet, console).run()
    from clues.server.federated import FederatedServer

    return FederatedServer(config, fed, fleet, console).run()


def make_server_app(config, fed, expected: int, holder: dict, tap: Tap | None = None, console: Console | None = None) -> ServerApp:
    """A ServerApp for the simulation engine; results (or the exception) land in ``holder``."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            holder["results"] = run_job(grid, config, fed, expected, tap, console)
        except BaseException as exc:  # surfaced by the caller: the simulation engine would only log it
            holder["error"] = exc

    return app


def load_job(path: str | Path):
    """``(RunConfig, FedSettings, expected silos)`` from a job file written by :mod:`clues.flower.deployment`."""
    from clues.config import fed_settings, make_config

    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return make_config(data["config"]), fed_settings(data["federated"]), int(data.get("expected_silos", len(data["config"].get("silos", {})) or 1))


# The deployment engine's ServerApp (pyproject: serverapp = "clues.flower.server_app:app").
app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    job = context.run_config.get("job")
    if not job:
        raise CluesError("run config has no 'job' (the JSON file written by `clues federate --engine deployment`)")
    config, fed, expected = load_job(str(job))
    run_job(grid, config, fed, expected)
