"""Federated CLUES on Flower's deployment engine, on this machine: ``python -m clues.collab.flower.deploy``.

What an operator would do by hand on several machines (docs/federated.md), done on 127.0.0.1:

1. write the Flower app folder (``OUT/flower-app/pyproject.toml``: the components are the installed
   ``clues.collab.flower.server_app:app`` and ``client_app:app``; the run config names the job
   file ``OUT/flower-app/job.json`` with the run settings) and a Flower configuration
   (``OUT/flower-home/config.toml``) with one SuperLink connection, ``clues-local``;
2. start ``flower-superlink --insecure`` and one ``flower-supernode --insecure`` per silo, each
   pointed at its own silo file through ``--node-config "silo-file='...' silo-name='...'"``;
3. ``flwr run OUT/flower-app clues-local``, then wait until ``OUT/results.json`` is written;
4. stop every process it started, by PID (process groups, so their ClientApp/ServerApp
   subprocesses go too), also on error or Ctrl-C.

Every wait has a timeout; ports are picked free at start so two runs never collide; logs of each
process land in ``OUT/logs/``. Same flags as ``clues federate`` (and ``--timeout`` for the whole run).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from clues.errors import CluesError

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tool(name: str) -> str:
    path = BIN / name
    return str(path) if path.exists() else name


def write_app(out: Path, config, fed) -> Path:
    """The Flower app folder and its job file; the app's code is the installed ``clues`` package."""
    app = out / "flower-app"
    app.mkdir(parents=True, exist_ok=True)
    job = app / "job.json"
    job.write_text(json.dumps({"config": absolute_paths(config.to_dict()), "federated": fed.to_dict(),
                               "expected_silos": len(config.silos)}, indent=2), encoding="utf-8")
    (app / "pyproject.toml").write_text(f"""[project]
name = "clues-federated"
version = "1.0.0"
description = "Federated CLUES: data selection by training dynamics, then FedAvg on the kept records"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "clues"

[tool.flwr.app.components]
serverapp = "clues.collab.flower.server_app:app"
clientapp = "clues.collab.flower.client_app:app"

[tool.flwr.app.config]
job = {json.dumps(str(job.resolve()))}
""", encoding="utf-8")
    return app


def absolute_paths(values: dict) -> dict:
    """The ServerApp runs in another process and folder: every path in the job must be absolute."""
    out = dict(values)
    for key in ("validation", "anchor", "test", "labels", "out"):
        if out.get(key):
            out[key] = str(Path(out[key]).resolve())
    out["silos"] = {name: str(Path(path).resolve()) for name, path in out["silos"].items()}
    for holder in (out, out.get("train") or {}):
        model = holder.get("model")
        if model and Path(model).exists():
            holder["model"] = str(Path(model).resolve())
    return out


def write_flower_config(home: Path, port: int) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(f"""[superlink]
default = "clues-local"

[superlink.clues-local]
address = "127.0.0.1:{port}"
insecure = true
""", encoding="utf-8")


class Processes:
    """Processes started here, each in its own process group, stopped by PID (never by name)."""

    def __init__(self, logs: Path, env: dict):
        self.logs, self.env = logs, env
        self.started: list[subprocess.Popen] = []
        self.pids: dict[str, int] = {}
        logs.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "wb")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        log.close()
        self.started.append(proc)
        self.pids[name] = proc.pid
        (self.logs / "pids.json").write_text(json.dumps(self.pids, indent=1))  # what to stop if this tool is killed
        return proc

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``grace``: our processes, their groups, and every descendant.

        Flower detaches its helpers (SuperExec, ServerApp, ClientApp processes) into sessions of their
        own, so the descendants are collected by PID before anything is signalled.
        """
        helpers = sorted({pid for proc in self.started for pid in descendants(proc.pid)})
        for proc in self.started:
            if proc.poll() is None:
                _signal_group(proc.pid, signal.SIGTERM)
        for pid in helpers:
            _signal_pid(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.started:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for proc in self.started:
            _signal_group(proc.pid, signal.SIGKILL)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        for pid in helpers:
            _signal_pid(pid, signal.SIGKILL)


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, grandchildren...), read from /proc (or psutil elsewhere)."""
    parents: dict[int, list[int]] = {}
    proc_dir = Path("/proc")
    if proc_dir.is_dir():
        for entry in proc_dir.iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            parents.setdefault(ppid, []).append(int(entry.name))
    else:  # pragma: no cover - macOS
        import psutil

        try:
            return [p.pid for p in psutil.Process(pid).children(recursive=True)]
        except psutil.Error:
            return []
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _signal_pid(pid: int, sig) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _signal_group(pid: int, sig) -> None:
    try:
        os.killpg(pid, sig)  # start_new_session: the group id is the PID we started
    except (ProcessLookupError, PermissionError):
        pass


def _wait_port(port: int, proc: subprocess.Popen, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise CluesError(f"{what} exited with code {proc.returncode} (see its log)")
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise CluesError(f"{what} did not open port {port} within {timeout:.0f} s")


def deploy(config, fed, timeout: float = 900.0, say=print) -> dict:
    """Run the federated job on a local SuperLink with one SuperNode per silo; return results.json."""
    out = Path(config.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    results, report = out / "results.json", out / "report.html"
    for old in (results, report):
        if old.exists():
            old.unlink()
    port = free_port()  # Flower 1.42: Fleet, Control and Runtime APIs share one HTTP port
    home = out / "flower-home"
    env = {**os.environ, "FLWR_HOME": str(home), "FLWR_TELEMETRY_ENABLED": "0", "PYTHONUNBUFFERED": "1",
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}  # Flower starts its helpers by name
    app = write_app(out, config, fed)
    write_flower_config(home, port)
    procs = Processes(out / "logs", env)
    deadline = time.monotonic() + timeout
    try:
        link = procs.start("superlink", [
            _tool("flower-superlink"), "--insecure", "--database", str(out / "superlink.db"),
            "--host", "127.0.0.1", "--port", str(port),
        ])
        _wait_port(port, link, 60, "flower-superlink")
        for name, path in config.silos.items():
            node_config = f"silo-file={json.dumps(str(Path(path).resolve()))} silo-name={json.dumps(name)} " \
                          f"workdir={json.dumps(str(out / 'silos' / name))}"
            if config.labels:
                node_config += f" labels-file={json.dumps(str(Path(config.labels).resolve()))}"
            procs.start(f"supernode-{name}", [
                _tool("flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{port}",
                "--node-config", node_config, "--host", "127.0.0.1", "--port", str(free_port()),
                "--max-wait-time", "60",
            ])
        say(f"SuperLink on 127.0.0.1:{port}, {len(config.silos)} SuperNodes; logs in {out / 'logs'}")
        submit = subprocess.run([_tool("flwr"), "run", str(app), "clues-local"], env=env, capture_output=True,
                                text=True, timeout=120)
        (out / "logs" / "flwr-run.log").write_text(submit.stdout + submit.stderr, encoding="utf-8")
        if submit.returncode != 0:
            raise CluesError(f"flwr run failed: {(submit.stderr or submit.stdout).strip()[-500:]}")
        say("run submitted; waiting for results.json")
        while not results.exists():
            if time.monotonic() > deadline:
                raise CluesError(f"no results after {timeout:.0f} s (see {out / 'logs'})")
            if link.poll() is not None:
                raise CluesError(f"flower-superlink exited with code {link.returncode} (see {out / 'logs'})")
            time.sleep(1.0)
        written = time.monotonic()
        while not report.exists() and time.monotonic() - written < 60:  # the ServerApp writes the report last
            time.sleep(0.5)
        return json.loads(results.read_text(encoding="utf-8"))
    finally:
        procs.stop()


def main(argv: list[str] | None = None) -> None:
    import typer

    from clues.commands.federate import federate_values

    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

    @app.command()
    def run(
        config_file: Path = typer.Option(None, "--config"),
        silo: list[str] = typer.Option([], "--silo"),
        validation: Path = typer.Option(None, "--validation"),
        anchor: Path = typer.Option(None, "--anchor"),
        test: Path = typer.Option(None, "--test"),
        labels: Path = typer.Option(None, "--labels"),
        model: str = typer.Option(None, "--model"),
        rounds: int = typer.Option(None, "--rounds"),
        local_steps: int = typer.Option(None, "--local-steps"),
        score_rounds: str = typer.Option(None, "--score-rounds"),
        fraction_train: float = typer.Option(None, "--fraction-train"),
        out: Path = typer.Option(None, "--out"),
        timeout: float = typer.Option(900.0, "--timeout", help="Seconds for the whole run."),
    ) -> None:
        """Federated CLUES on a local SuperLink + one SuperNode per silo (deployment engine)."""
        config, fed = federate_values(config_file, silo, validation, anchor, test, labels, model, None, None, None,
                                      rounds, local_steps, score_rounds, fraction_train, out)
        results = deploy(config, fed, timeout)
        print(json.dumps({c: e.get("mean_test_loss") for c, e in results["conditions"].items()}, indent=2))

    def stop_on_sigterm(signum, frame):  # `kill PID` of this tool still stops what it started (finally)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop_on_sigterm)
    try:
        app(argv, standalone_mode=False)
    except CluesError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
