"""Federated CLUES on Flower's deployment engine, on this machine: ``clues federate --engine deployment``.

What an operator would do by hand on several machines (docs/federated.md), done on 127.0.0.1:

1. write the Flower app folder (``OUT/flower-app/pyproject.toml``: the components are the installed
   ``clues.flower.server_app:app`` and ``client_app:app``; the run config names the job
   file ``OUT/flower-app/job.json`` with the run settings) and a Flower configuration
   (``OUT/flower-home/config.toml``) with one SuperLink connection, ``clues-local``;
2. secure the federation (:func:`security_for`): TLS with the certificates in ``--certs DIR``
   (``ca.pem``, ``server.pem``, ``server.key``; without ``--certs``, self-signed ones made for this
   run in ``OUT/certs``), and SuperNode authentication: one key pair per silo in ``OUT/flower-auth``,
   each public key registered with ``flwr supernode register`` before the SuperNodes start, and the
   SuperLink started with ``--enable-supernode-auth`` so it refuses any other SuperNode.
   ``--insecure`` (plaintext, any SuperNode accepted) only when asked for by name, with a warning;
3. start ``flower-superlink`` and one ``flower-supernode`` per silo, each pointed at its own silo
   file through ``--node-config "silo-file='...' silo-name='...'"``;
4. ``flwr run OUT/flower-app clues-local``, then wait until ``OUT/results.json`` is written;
5. stop every process it started, by PID (process groups, so their ClientApp/ServerApp
   subprocesses go too), also on error or Ctrl-C.

Every wait has a timeout; ports are picked free at start so two runs never collide; logs of each
process land in ``OUT/logs/``. ``kill PID`` of the command stops what it started too (SIGTERM
becomes an exit, so the cleanup runs). The command line is `clues federate`'s; this module has none.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
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
serverapp = "clues.flower.server_app:app"
clientapp = "clues.flower.client_app:app"

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


@dataclass(frozen=True)
class Security:
    """How the local federation is protected: TLS files (``None``: plaintext, asked for by name) and
    each SuperNode's authentication key pair (``None``: the SuperLink accepts any SuperNode)."""

    tls: dict[str, Path] | None
    node_keys: dict[str, tuple[Path, Path]] | None = None


INSECURE_WARNING = ("--insecure: the SuperLink and SuperNodes talk in plaintext and the SuperLink accepts any "
                    "SuperNode; use it only on a trusted, closed network")


def security_for(out: Path, silos, certs: Path | None = None, insecure: bool = False, say=print) -> Security:
    """TLS from ``certs`` (or trial certificates made in ``OUT/certs``) plus SuperNode keys, or plaintext if ``insecure``."""
    from clues.flower.certs import check_tls_folder, make_certificates, make_node_keys

    if insecure:
        if certs is not None:
            raise CluesError("--insecure and --certs exclude each other: choose TLS or plaintext")
        say(f"warning: {INSECURE_WARNING}")
        return Security(None)
    if certs is not None:
        tls = check_tls_folder(certs)
    else:
        tls = make_certificates(out / "certs", days=1, overwrite=True)
        say(f"TLS with self-signed certificates made for this run in {out / 'certs'} (give your own with --certs DIR)")
    return Security(tls, make_node_keys(out / "flower-auth", silos, overwrite=True))


def superlink_argv(port: int, database: Path, security: Security) -> list[str]:
    argv = [_tool("flower-superlink"), "--database", str(database), "--host", "127.0.0.1", "--port", str(port)]
    if security.tls is None:
        return argv + ["--insecure"]
    argv += ["--ssl-ca-certfile", str(security.tls["ca.pem"]), "--ssl-certfile", str(security.tls["server.pem"]),
             "--ssl-keyfile", str(security.tls["server.key"])]
    return argv + (["--enable-supernode-auth"] if security.node_keys else [])


def supernode_argv(name: str, superlink_port: int, node_config: str, security: Security) -> list[str]:
    """One SuperNode; its own Runtime API (for its ClientApp processes) listens on 127.0.0.1 only."""
    argv = [_tool("flower-supernode"), "--superlink", f"127.0.0.1:{superlink_port}", "--node-config", node_config,
            "--host", "127.0.0.1", "--port", str(free_port()), "--max-wait-time", "60"]
    if security.tls is None:
        return argv + ["--insecure"]
    argv += ["--root-certificates", str(security.tls["ca.pem"])]
    if security.node_keys:
        argv += ["--auth-supernode-private-key", str(security.node_keys[name][0])]
    return argv


def write_flower_config(home: Path, port: int, security: Security) -> None:
    """The ``flwr`` CLI's connection ``clues-local``: TLS verified against the CA, or plaintext if insecure."""
    home.mkdir(parents=True, exist_ok=True)
    tls = "insecure = true" if security.tls is None else f"root-certificates = {json.dumps(str(security.tls['ca.pem']))}"
    (home / "config.toml").write_text(f"""[superlink]
default = "clues-local"

[superlink.clues-local]
address = "127.0.0.1:{port}"
{tls}
""", encoding="utf-8")


def register_supernodes(security: Security, env: dict, out: Path) -> None:
    """``flwr supernode register`` every SuperNode's public key, so the SuperLink admits exactly these."""
    for name, (_, public) in (security.node_keys or {}).items():
        done = subprocess.run([_tool("flwr"), "supernode", "register", str(public), "clues-local", "--name", name],
                              env=env, capture_output=True, text=True, timeout=120)
        (out / "logs" / f"register-{name}.log").write_text(done.stdout + done.stderr, encoding="utf-8")
        if done.returncode != 0:
            raise CluesError(f"flwr supernode register {name} failed: {(done.stderr or done.stdout).strip()[-300:]}")


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


def _is_flower_process(pid: int, out: Path) -> bool:
    """``pid`` is alive and is one of the Flower tools a run on ``out`` started (its command line names
    a Flower tool and this output folder), so a process id the system has since given to another
    program is never signalled."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    names = [Path(a.decode(errors="replace")).name for a in argv if a]
    return any(n.startswith("flower-") or n == "flwr" for n in names) and str(out).encode() in b" ".join(argv)


def stop_leftovers(out: Path, say=print, grace: float = 10.0) -> list[int]:
    """Stop what an earlier deployment on ``out`` left running (its parent killed -9: SuperLink,
    SuperNodes and every process below them), found through its ``logs/pids.json``; returns their ids."""
    record = out / "logs" / "pids.json"
    try:
        pids = [int(pid) for pid in json.loads(record.read_text(encoding="utf-8")).values()]
    except (OSError, ValueError, TypeError, AttributeError):
        return []
    roots = [pid for pid in pids if _is_flower_process(pid, out)]
    if not roots:
        return []
    everyone = sorted({*roots, *(child for pid in roots for child in descendants(pid))})
    say(f"stopping {len(everyone)} processes an earlier run on {out} left running (ids {', '.join(map(str, everyone))})")
    for pid in everyone:
        _signal_pid(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(pid) for pid in everyone):
        time.sleep(0.2)
    for pid in everyone:
        _signal_pid(pid, signal.SIGKILL)
    return everyone


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


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


def _wait_port(port: int, proc: subprocess.Popen, timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            where = f"its log: {log}" if log else "its log"
            raise CluesError(f"{what} exited with code {proc.returncode} (see {where})")
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise CluesError(f"{what} did not open port {port} within {timeout:.0f} s")


def deploy(config, fed, timeout: float = 900.0, say=print, certs: Path | None = None, insecure: bool = False) -> dict:
    """Run the federated job on a local SuperLink with one SuperNode per silo; return results.json.

    TLS and SuperNode authentication unless ``insecure`` (see :func:`security_for`).
    """
    out = Path(config.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()  # Flower 1.42: Fleet, Control and Runtime APIs share one HTTP port
    home = out / "flower-home"
    env = {**os.environ, "FLWR_HOME": str(home), "FLWR_TELEMETRY_ENABLED": "0", "PYTHONUNBUFFERED": "1",
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}  # Flower starts its helpers by name
    app = write_app(out, config, fed)
    security = security_for(out, config.silos, certs, insecure, say)
    stop_leftovers(out, say)  # a run killed -9 leaves its Flower stack writing here
    # Every input is checked (a mistyped --certs is refused above): only now may the last run's results go.
    results, report = out / "results.json", out / "report.html"
    for old in (results, report):
        if old.exists():
            old.unlink()
    write_flower_config(home, port, security)
    procs = Processes(out / "logs", env)
    deadline = time.monotonic() + timeout
    previous = _exit_on_sigterm()
    try:
        link = procs.start("superlink", superlink_argv(port, out / "superlink.db", security))
        _wait_port(port, link, 60, "flower-superlink", out / "logs" / "superlink.log")
        register_supernodes(security, env, out)
        for name, path in config.silos.items():
            node_config = f"silo-file={json.dumps(str(Path(path).resolve()))} silo-name={json.dumps(name)} " \
                          f"workdir={json.dumps(str(out / 'silos' / name))}"
            if config.labels:
                node_config += f" labels-file={json.dumps(str(Path(config.labels).resolve()))}"
            procs.start(f"supernode-{name}", supernode_argv(name, port, node_config, security))
        mode = "plaintext (--insecure)" if security.tls is None else "TLS" + (", SuperNode authentication" if security.node_keys else "")
        say(f"SuperLink on 127.0.0.1:{port} ({mode}), {len(config.silos)} SuperNodes; logs in {out / 'logs'}")
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
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _exit_on_sigterm():
    """`kill PID` of this process still stops what it started (the ``finally`` runs); returns the old handler."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    return signal.signal(signal.SIGTERM, stop)
