"""Federated CLUES on Flower: FedAvg, the privacy boundary, failure tolerance, both engines end to end.

The simulation test runs Flower's simulation engine (Ray) once for the whole module, with a silo
that crashes in round 2 (a fault drill), and several tests read that one run. The deployment test
starts a real SuperLink and SuperNodes on 127.0.0.1 and checks that every process is stopped.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from rich.console import Console

from clues import protocol
from clues.config import FedSettings, make_config
from clues.io import read_jsonl
from clues.server.federated import fedavg

pytest.importorskip("flwr")
os.environ["FLWR_TELEMETRY_ENABLED"] = "0"

FL_CONDITIONS = {"fl-mixed", "fl-clues", "fl-oracle"}


@pytest.fixture(scope="module")
def consortium(tmp_path_factory):
    """Two small silos cut from the shipped `mixed` benchmark (real text, real corruptions)."""
    from conftest import small_consortium

    return small_consortium(tmp_path_factory.mktemp("fed-consortium"), 12, {"validation": 2, "anchor": 2, "test": 2})


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_tokenizer):
    from conftest import make_tiny_llama

    folder = tmp_path_factory.mktemp("fed-model") / "tiny-llama"
    make_tiny_llama(tiny_tokenizer).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


def _config(consortium, model_dir, out, labels=True):
    silos, public, label_file = consortium
    return make_config({
        "silos": silos, **public, "labels": label_file if labels else None, "model": str(model_dir), "out": str(out),
        "train": {"batch_size": 4, "max_length": 64}, "score": {"batch_size": 8, "precondition": "none"},
        "eval_batch_size": 8,
    })


# -- FedAvg -------------------------------------------------------------------------------------------


def test_fedavg_is_the_weighted_mean_of_the_adapters():
    torch.manual_seed(0)
    names = ("x.lora_A.weight", "x.lora_B.weight")
    adapters = [{n: torch.randn(4, 3) for n in names} for _ in range(3)]
    counts = [5, 1, 14]
    replies = {f"s{i}": protocol.Message(protocol.ADAPTER, {"num_examples": c}, a) for i, (a, c) in enumerate(zip(adapters, counts))}
    merged = fedavg(replies)
    for n in names:
        by_hand = sum(c * a[n] for a, c in zip(adapters, counts)) / sum(counts)
        assert torch.allclose(merged[n], by_hand, atol=1e-6)


def test_records_round_trip_is_lossless():
    from clues.flower.records import from_records, to_records

    message = protocol.Message(protocol.ADAPTER, {"num_examples": 3, "note": "é"}, {"w": torch.randn(2, 3)})
    back = from_records(to_records(message))
    assert back.kind == message.kind and back.meta == message.meta and torch.equal(back.tensors["w"], message.tensors["w"])


def test_score_rounds_default_spread_over_the_warm_up():
    assert FedSettings(rounds=10).checkpoints == (4, 7, 10)
    assert FedSettings(rounds=1).checkpoints == (1,)
    assert FedSettings(rounds=4, score_rounds=(4, 2)).checkpoints == (2, 4)


# -- the simulation engine, once for the module ----------------------------------------------------------


@pytest.fixture(scope="module")
def simulated(consortium, model_dir, tmp_path_factory):
    """`clues federate`'s engine on 2 silos, 3 rounds; silo `bank` crashes in round 2 of every condition."""
    import clues.flower.grid as grid
    from clues.flower.simulation import simulate

    out = tmp_path_factory.mktemp("fed-sim") / "run"
    crossed, parsed = [], []
    original = grid.from_records

    def recording(content):
        message = original(content)
        parsed.append(message)
        return message

    grid.from_records = recording  # the ServerApp runs in this process: see every reply it decodes
    try:
        # Timeouts only guard against a hang: on a loaded 2-core machine the first message (Ray actors
        # importing torch) took over 120 s, and a silent silo here would be a false failure.
        fed = FedSettings(rounds=3, local_steps=2, score_rounds=(1, 3), round_timeout=600)
        results = simulate(_config(consortium, model_dir, out), fed, Console(quiet=True),
                                           tap=lambda silo, direction, blob: crossed.append((silo, direction, blob)),
                                           faults={"bank": [2]})
    finally:
        grid.from_records = original
    return out, results, crossed, parsed


def test_simulation_writes_results_with_the_federated_conditions(simulated):
    out, results, _, _ = simulated
    saved = json.loads((out / "results.json").read_text())
    assert set(saved["conditions"]) == FL_CONDITIONS
    for entry in saved["conditions"].values():
        assert set(entry["test_loss"]) and entry["mean_test_loss"] > 0
    # the oracle recovers all of its own gain, where it has one beyond noise (per-record test losses)
    from clues.stats import clearly_above

    mixed, oracle = (saved["conditions"][c]["record_losses"] for c in ("fl-mixed", "fl-oracle"))
    real_gain = clearly_above([x for d in sorted(mixed) for x in mixed[d]], [x for d in sorted(oracle) for x in oracle[d]])
    assert saved["conditions"]["fl-oracle"]["oracle_gain_recovered"] == (pytest.approx(1.0) if real_gain else None)
    for condition in FL_CONDITIONS:
        curve = saved["federated"]["curves"][condition]
        assert [p["round"] for p in curve] == [1, 2, 3] and all(p["mean_test_loss"] > 0 for p in curve)
    selection = saved["selection"]["fl-clues"]
    assert set(selection) == {"clinic", "bank"}
    assert all(s["total"] == 12 and 0 <= s["kept"] <= 12 and s["tau"] == saved["federated"]["tau"] for s in selection.values())
    # Recounted from each silo's own files: a record's score is the sum of its score rounds' terms, and
    # the silo keeps exactly the records whose score reaches the global tau.
    tau = saved["federated"]["tau"]
    for name, entry in selection.items():
        rows = read_jsonl(out / "silos" / name / "scores.jsonl")
        assert all(len(r["per_checkpoint"]) == 2 and r["score"] == pytest.approx(math.fsum(r["per_checkpoint"]), rel=1e-9, abs=1e-15)
                   for r in rows)
        above = [r["id"] for r in rows if r["score"] >= tau]
        assert entry["kept"] == len(above)
        assert [r["id"] for r in read_jsonl(out / "silos" / name / "kept.jsonl")] == above
    for name in ("report.md", "report.html", "boundary_log.jsonl", "federated_rounds.png"):
        assert (out / name).exists(), name
    assert "Federated: global test loss per round" in (out / "report.md").read_text()
    adapter = out / "server" / "adapters" / "fl-clues"
    assert (adapter / "adapter_config.json").exists() and (adapter / "adapter_model.safetensors").exists()
    log = read_jsonl(out / "boundary_log.jsonl")
    assert {r["direction"] for r in log} == {"server->silo", "silo->server"}
    assert all({"round", "message_type", "records", "bytes", "kind"} <= set(r) and r["bytes"] > 0 for r in log)
    assert {r["message_type"] for r in log} >= {"train", "query.score", "query.select", "query.hello"}
    from conftest import assert_crossings_documented

    assert_crossings_documented(log)  # every field that crossed has its row in docs/privacy.md


def test_a_silo_failing_mid_round_does_not_stop_the_run(simulated):
    _, results, _, _ = simulated
    fits = {(r["condition"], r["round"]): r for r in results["federated"]["rounds"] if r["kind"] == protocol.FIT}
    for condition in FL_CONDITIONS:
        assert fits[(condition, 2)]["answered"] == ["clinic"] and fits[(condition, 2)]["missing"] == ["bank"]
        assert fits[(condition, 3)]["answered"] == ["bank", "clinic"]
    failures = results["federated"]["failures"]
    assert failures and all(f["silo"] == "bank" and f["round"] == 2 and "fault drill" in f["reason"] for f in failures)


def test_no_private_record_crosses_the_flower_boundary(simulated, consortium, tiny_tokenizer):
    _, _, crossed, parsed = simulated
    silos, _, _ = consortium
    private = [row for path in silos.values() for row in read_jsonl(path)]
    raw_wire = b"\n".join(blob for _, direction, blob in crossed if direction == "silo->server")
    assert raw_wire
    assert {m.kind for m in parsed} == {protocol.INFO, protocol.ADAPTER, protocol.SCORES, protocol.SELECTION}
    from conftest import assert_nothing_private_crossed

    failures = simulated[1]["federated"]["failures"]  # the crash drill's error path, as results.json has it
    assert_nothing_private_crossed(parsed, raw_wire, private, tiny_tokenizer, also=[json.dumps(failures)])


# -- the deployment engine on loopback -------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_deployment_engine_on_loopback_stops_every_process(consortium, model_dir, tmp_path):
    from clues.flower.deployment import deploy

    out = tmp_path / "deployed"
    config = _config(consortium, model_dir, out, labels=False)
    fed = FedSettings(rounds=1, local_steps=1, round_timeout=600)  # hang guards, not measurements (see above)
    try:
        results = deploy(config, fed, timeout=900, say=lambda *a: None)
    finally:
        pids = json.loads((out / "logs" / "pids.json").read_text()) if (out / "logs" / "pids.json").exists() else {}
        assert set(pids) == {"superlink", "supernode-clinic", "supernode-bank"}
        assert not [name for name, pid in pids.items() if _alive(pid)]
    assert set(results["conditions"]) == {"fl-mixed", "fl-clues"}
    assert results["federated"]["engine"] == "flower" and sorted(results["federated"]["silos"]) == ["bank", "clinic"]
    # TLS by default (trial certificates made for the run) and only the registered SuperNodes admitted
    link_log = (out / "logs" / "superlink.log").read_text()
    assert "running on https://127.0.0.1" in link_log and "SuperNode authentication is disabled" not in link_log
    assert link_log.count("[Fleet.ActivateNode] Activated") == 2
    for name in ("clinic", "bank"):
        assert "registered successfully" in (out / "logs" / f"register-{name}.log").read_text()
        assert (out / "flower-auth" / f"{name}.key").stat().st_mode & 0o077 == 0
    assert "insecure" not in (out / "flower-home" / "config.toml").read_text()
    assert (out / "report.html").exists()
    log = read_jsonl(out / "boundary_log.jsonl")
    assert {r["silo"] for r in log if r["kind"] == protocol.FIT} == {"clinic", "bank"}



def test_a_mistyped_certs_folder_is_refused_before_the_last_results_are_touched(consortium, model_dir, tmp_path):
    """Rerunning a finished deployment with a wrong --certs path: one error naming the folder, and the
    finished run's results.json and report.html are still there, unchanged."""
    from clues.errors import CluesError
    from clues.flower.deployment import deploy

    out = tmp_path / "deployed"
    out.mkdir()
    (out / "results.json").write_text('{"conditions": {}}', encoding="utf-8")
    (out / "report.html").write_text("<p>finished</p>", encoding="utf-8")
    with pytest.raises(CluesError, match=r"--certs .*typo: missing ca.pem"):
        deploy(_config(consortium, model_dir, out), FedSettings(rounds=1, local_steps=1), certs=tmp_path / "typo")
    assert (out / "results.json").read_text(encoding="utf-8") == '{"conditions": {}}'
    assert (out / "report.html").read_text(encoding="utf-8") == "<p>finished</p>"


def test_a_rerun_stops_the_flower_processes_a_killed_run_left(tmp_path):
    """A deployment killed -9 leaves its SuperLink running; the next run on that --out finds it through
    logs/pids.json and stops it. A process id that now belongs to another program is left alone."""
    import subprocess

    from clues.flower.deployment import BIN, Security, _wait_port, free_port, stop_leftovers, superlink_argv

    out = tmp_path / "deployed"
    (out / "logs").mkdir(parents=True)
    port = free_port()
    log = open(tmp_path / "superlink.log", "wb")
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr"), "FLWR_TELEMETRY_ENABLED": "0",
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}  # the SuperLink starts its SuperExec by name
    link = subprocess.Popen(superlink_argv(port, out / "superlink.db", Security(None)), start_new_session=True,
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    stranger = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        try:
            _wait_port(port, link, 60, "flower-superlink")
        except Exception:
            raise AssertionError((tmp_path / "superlink.log").read_text(errors="replace")[-2000:])
        (out / "logs" / "pids.json").write_text(json.dumps({"superlink": link.pid, "supernode-bank": stranger.pid}))
        said = []
        stopped = stop_leftovers(out, said.append)
        assert link.pid in stopped and stranger.pid not in stopped
        assert link.wait(timeout=30) is not None and stranger.poll() is None
        assert "stopping" in said[0] and str(link.pid) in said[0]
        assert stop_leftovers(out, said.append) == []  # nothing left the second time
    finally:
        for proc in (link, stranger):
            proc.kill()
            proc.wait()

# -- a silo that disappears: the Grid transport without an engine ------------------------------------------


class VanishingGrid:
    """A Grid whose nodes run the real deployed ClientApp in-process; ``gone`` nodes stop answering."""

    def __init__(self, node_configs: dict[int, dict], gone: dict[int, set]):
        from flwr.app import Context, RecordDict

        from clues.flower.client_app import app

        self.app, self.gone = app, gone
        self.contexts = {n: Context(1, n, c, RecordDict(), {}) for n, c in node_configs.items()}

    def get_node_ids(self):
        return list(self.contexts)

    def send_and_receive(self, messages, *, timeout=None):
        replies = []
        for message in messages:
            node = message.metadata.dst_node_id
            if message.metadata.group_id in self.gone.get(node, set()):
                continue  # no reply before the timeout
            try:
                replies.append(self.app(message, self.contexts[node]))
            except Exception as ex:  # what Flower's runtime sends back when a ClientApp raises (run_clientapp.py)
                from flwr.app import Error, Message
                from flwr.common.constant import ErrorCode

                reason = str(type(ex)) + ":<'" + str(ex) + "'>"
                replies.append(Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=message))
        return replies


def test_a_silo_that_disappears_is_left_out_logged_and_said(consortium, model_dir, tmp_path, monkeypatch, clues_here):
    from flwr.supercore.task_identity import TaskIdentity

    from clues.flower.grid import GridFleet
    from clues.protocol import BoundaryLog
    from clues.server.federated import FederatedServer

    for key, value in (("_run_id", 1), ("_task_id", 1), ("_node_id", 1)):  # what a ServerApp process has set
        monkeypatch.setattr(TaskIdentity, key, value)
    silos, _, labels = consortium
    out = tmp_path / "vanishing"
    nodes = {7: {"silo-file": silos["clinic"], "workdir": str(out / "silos" / "clinic"), "labels-file": labels},
             9: {"silo-file": silos["bank"], "workdir": str(out / "silos" / "bank"), "labels-file": labels}}
    grid = VanishingGrid(nodes, gone={9: {"2"}})
    fleet = GridFleet(grid, 2, BoundaryLog(out / "boundary_log.jsonl"), timeout=5, console=Console(quiet=True), wait=1)
    assert sorted(fleet.silos()) == ["bank", "clinic"]  # names from the silo files, through --node-config
    config = _config(consortium, model_dir, out)
    results = FederatedServer(config, FedSettings(rounds=2, local_steps=1, score_rounds=(1,)), fleet, Console(quiet=True)).run()
    fits = {(r["condition"], r["round"]): r for r in results["federated"]["rounds"] if r["kind"] == protocol.FIT}
    assert fits[("fl-mixed", 2)]["missing"] == ["bank"] and fits[("fl-mixed", 1)]["missing"] == []
    assert any(f["silo"] == "bank" and "no reply" in f["reason"] for f in results["federated"]["failures"])
    assert set(results["conditions"]) == FL_CONDITIONS
    # said loudly: the first lines of the report, the console of `clues federate`, and its exit status
    missed = sum(f["silo"] == "bank" for f in results["federated"]["failures"])  # round 2 of every condition
    assert missed == len(FL_CONDITIONS) and len(results["warnings"]) == 1
    assert results["warnings"][0].startswith(f"silo 'bank': {missed} replies missing (rounds 2), failed or timed out")
    assert f"warning: {results['warnings'][0]}" in (out / "report.md").read_text(encoding="utf-8").split("## ")[1]
    import clues.commands.federate as federate_command

    silo_flags = [a for name, path in silos.items() for a in ("--silo", f"{name}={path}")]
    public = [a for name in ("validation", "anchor", "test") for a in (f"--{name}", getattr(config, name))]
    monkeypatch.setattr(federate_command, "run_federated", lambda *args, **kwargs: results)  # the run above, as the command reads it
    code, text = clues_here("federate", *silo_flags, *public, "--model", model_dir, "--out", tmp_path / "cli")
    assert code == federate_command.PARTIAL == 3, text
    assert f"warning: silo 'bank': {missed} replies missing" in text


def test_a_failing_silo_tells_the_server_its_name_and_counts_never_a_record(consortium, tmp_path, monkeypatch, tiny_tokenizer):
    """Silos failing at hello (a labels file without one of the silo's records; a silo file with a
    repeated id) reach the server as the error's kind and counts, under the silo's name and node id:
    no record id in the wire bytes, the failure reasons (results.json) or the console. The full
    message stays in the silo's own log."""
    import io

    from conftest import assert_nothing_private_crossed
    from flwr.supercore.task_identity import TaskIdentity

    import clues.flower.grid as grid
    from clues.flower.grid import GridFleet
    from clues.io import write_jsonl
    from clues.protocol import BoundaryLog

    silos, _, labels = consortium
    bank, clinic = read_jsonl(silos["bank"]), read_jsonl(silos["clinic"])
    partial = tmp_path / "labels.jsonl"
    write_jsonl(partial, [r for r in read_jsonl(labels) if r["id"] != bank[0]["id"]])
    repeated = tmp_path / "exam.jsonl"
    write_jsonl(repeated, clinic[:3] + clinic[:1])
    out = tmp_path / "failing"
    nodes = {7: {"silo-file": silos["clinic"], "workdir": str(out / "clinic"), "labels-file": labels},
             9: {"silo-file": silos["bank"], "workdir": str(out / "bank"), "labels-file": str(partial)},
             11: {"silo-file": str(repeated), "workdir": str(out / "exam")},
             13: {"silo-file": silos["bank"], "silo-name": "clinic", "workdir": str(out / "impostor")}}
    for key, value in (("_run_id", 1), ("_task_id", 1), ("_node_id", 1)):  # what a ServerApp process has set
        monkeypatch.setattr(TaskIdentity, key, value)
    crossed, parsed, said = [], [], io.StringIO()
    monkeypatch.setattr(grid, "from_records", lambda content, original=grid.from_records: parsed.append(original(content)) or parsed[-1])
    fleet = GridFleet(VanishingGrid(nodes, gone={}), 4,
                      BoundaryLog(out / "boundary_log.jsonl", tap=lambda silo, direction, blob: crossed.append((direction, blob))),
                      timeout=5, console=Console(file=said, width=200), wait=1)
    assert fleet.silos() == ["clinic"]
    failures = {f["silo"]: f for f in fleet.failures}
    assert failures["bank"] == {"round": 0, "silo": "bank", "node": 9, "kind": protocol.HELLO,
                                "reason": f"SiloError: 1 of its {len(bank)} records have no label"}
    assert failures["exam"]["node"] == 11 and failures["exam"]["reason"].startswith("DataError: 1 problems in the silo's data")
    assert failures["clinic"]["node"] == 13 and "SuperNode 7 already answers as silo 'clinic'" in failures["clinic"]["reason"]
    assert bank[0]["id"] in (out / "bank" / "silo-errors.log").read_text()  # the details stay in the silo
    assert clinic[0]["id"] in (out / "exam" / "silo-errors.log").read_text()
    assert [m.kind for m in parsed].count(protocol.ERROR) == 2
    raw_wire = b"\n".join(blob for direction, blob in crossed if direction == "silo->server")
    private = bank + clinic
    assert_nothing_private_crossed(parsed, raw_wire, private, tiny_tokenizer, also=[said.getvalue(), json.dumps(fleet.failures)])


def test_adam_preconditioner_uses_each_silos_own_moments_and_pools_anchor_scores(consortium, model_dir, tmp_path):
    """In-process silos (no engine): with ``adam`` every silo scores the public anchors with its moments.

    tau and eta are recomputed here by hand: eta of a score round is the mean lr of the rounds since
    the previous score round (4 rounds, warm-up 1 step: lr, lr, 2/3 lr, 1/3 lr, so eta is lr after
    round 2 and lr/2 after round 4), and tau is the mean of the anchors' scores summed over both
    rounds and pooled over the silos (policy ``mean``)."""
    from clues.data import load_records
    from clues.server.federated import FederatedServer
    from clues.server.fleet import LocalFleet
    from clues.silo import Silo

    silos, public, _ = consortium
    out = tmp_path / "adam"
    lr = 1e-3
    config = make_config({"silos": silos, **public, "model": str(model_dir), "out": str(out),
                          "train": {"batch_size": 4, "max_length": 64, "lr": lr, "warmup_ratio": 0.03},
                          "score": {"batch_size": 8, "precondition": "adam"}, "select": {"policy": "mean"},
                          "conditions": ["mixed", "clues"], "eval_batch_size": 8})
    fleet = LocalFleet(Silo(n, load_records(p), out / "silos" / n) for n, p in silos.items())
    server = FederatedServer(config, FedSettings(rounds=4, local_steps=1, score_rounds=(2, 4)), fleet, Console(quiet=True))
    columns, etas = [], []
    original = server.score_checkpoint

    def recording(round_, adapter, eta):
        column, replies = original(round_, adapter, eta)
        columns.append(column)
        etas.append(eta)
        return column, replies

    server.score_checkpoint = recording
    results = server.run()
    assert etas == pytest.approx([lr, lr / 2], rel=1e-12)
    assert [sorted(c) for c in columns] == [["bank", "clinic"], ["bank", "clinic"]]  # anchors scored by the silos
    assert columns[0]["bank"] != columns[0]["clinic"]  # each with its own moments
    summed = [first + second for silo in ("bank", "clinic") for first, second in zip(columns[0][silo], columns[1][silo])]
    assert results["federated"]["tau"] == pytest.approx(sum(summed) / len(summed), rel=1e-9)
    for name in silos:
        assert (out / "silos" / name / "federated" / "fl-mixed" / "optimizer.safetensors").exists()
        assert len(read_jsonl(out / "silos" / name / "scores.jsonl")[0]["per_checkpoint"]) == 2


# -- merging mode over Flower; federated mode resumed after a kill ------------------------------------------


def test_merging_mode_over_flower_gives_the_in_process_numbers(consortium, model_dir, tmp_path):
    """`clues run --fleet flower`: the same silo code behind Flower's simulation engine, the same seed,
    the same numbers (and the same merged adapters) as with the silos in this process."""
    from clues.flower.simulation import simulate
    from clues.server.fleet import open_local_fleet
    from clues.server.merging import MergingServer

    silos, public, labels = consortium

    def config(out):
        return make_config({"silos": silos, **public, "labels": labels, "model": str(model_dir), "out": str(out),
                            "train": {"epochs": 1, "batch_size": 4, "max_length": 64}, "score": {"batch_size": 8},
                            "eval_batch_size": 8})

    here = config(tmp_path / "local")
    local = MergingServer(here, open_local_fleet(here), Console(quiet=True)).run()
    flower = simulate(config(tmp_path / "flower"), None, Console(quiet=True))
    for key in ("conditions", "selection", "scores", "training"):
        assert flower[key] == local[key], key
    for condition in ("mixed", "clues", "oracle"):
        merged = Path("server") / "merged" / condition / "adapter_model.safetensors"
        assert (tmp_path / "flower" / merged).read_bytes() == (tmp_path / "local" / merged).read_bytes()
    log = read_jsonl(tmp_path / "flower" / "boundary_log.jsonl")
    assert {r["kind"] for r in log if r["direction"] == "silo->server"} == {
        protocol.INFO, protocol.ADAPTER, protocol.SCORES, protocol.SELECTION}


def test_federate_resumes_after_being_killed_mid_run(consortium, model_dir, tmp_path):
    """`clues federate` killed (SIGKILL) after its warm-up condition: the rerun skips what finished,
    reruns the interrupted condition from its first round, and ends with the numbers of a run that
    was never interrupted."""
    import subprocess
    import sys
    import time

    from clues.config import fed_settings
    from clues.server.federated import FederatedServer
    from clues.server.fleet import open_local_fleet

    silos, public, labels = consortium
    toml = tmp_path / "fed.toml"
    toml.write_text("\n".join([
        *(f'{k} = "{v}"' for k, v in {**public, "labels": labels, "model": str(model_dir)}.items()),
        "eval_batch_size = 8",
        "[silos]", *(f'{k} = "{v}"' for k, v in silos.items()),
        "[train]", "batch_size = 4", "max_length = 64",
        "[score]", "batch_size = 8", 'precondition = "none"', "w_other = 1.0",
        "[federated]", "rounds = 3", "local_steps = 2", "score_rounds = [1, 3]",
    ]) + "\n")
    out = tmp_path / "killed"
    argv = [sys.executable, "-m", "clues.cli", "federate", "--config", str(toml), "--fleet", "local", "--out", str(out)]
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "HF_HUB_OFFLINE": "1"}
    first = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    warmed, deadline = out / ".stages" / "fl-mixed.json", time.monotonic() + 400
    while not warmed.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    first.kill()
    first.wait(timeout=60)
    assert warmed.exists(), first.stderr.read().decode()[-2000:]
    assert not (out / "results.json").exists()  # killed mid-run
    again = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "fl-mixed: finished earlier, skipped" in again.stdout
    resumed = json.loads((out / "results.json").read_text())

    from clues.config import load_toml
    from clues.config import make_config as build

    values = load_toml(toml)
    fed = fed_settings(values.pop("federated"))
    straight = build({**values, "out": str(tmp_path / "straight")})
    expected = FederatedServer(straight, fed, open_local_fleet(straight), Console(quiet=True)).run()
    assert resumed["conditions"] == expected["conditions"]
    assert resumed["selection"] == expected["selection"] and resumed["federated"]["tau"] == expected["federated"]["tau"]
    assert resumed["federated"]["curves"] == expected["federated"]["curves"]
    for condition in ("fl-mixed", "fl-clues", "fl-oracle"):
        adapter = Path("server") / "adapters" / condition / "adapter_model.safetensors"
        assert (out / adapter).read_bytes() == (tmp_path / "straight" / adapter).read_bytes()


def test_federate_flags_that_do_not_go_together_are_one_line_errors(clues_here):
    base = ["federate", "--silo", "a=a.jsonl", "--validation", "v.jsonl", "--anchor", "a.jsonl", "--test", "t.jsonl"]
    for extra, said in ((["--engine", "foo"], "--engine 'foo': choose simulation or deployment"),
                        (["--fleet", "grid"], "--fleet 'grid': choose flower or local"),
                        (["--fleet", "local", "--engine", "deployment"], "it does not go with --fleet local"),
                        (["--insecure"], "are options of --engine deployment")):
        code, text = clues_here(*base, *extra)
        assert code == 1 and text.startswith("error: ") and said in text and "Traceback" not in text
    code, text = clues_here("run", "--silo", "a=a.jsonl", "--validation", "v.jsonl", "--anchor", "a.jsonl",
                            "--test", "t.jsonl", "--fleet", "grid")
    assert code == 1 and "--fleet 'grid': choose local or flower" in text
