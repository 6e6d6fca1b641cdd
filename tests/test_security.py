"""Security: silo names that are paths, failures that would carry private text, TLS and SuperNode
authentication of the deployment engine.

Fast tests call the real entry points (the CLI in this process, the config loader, the ClientApp's
node config, a real silo behind the in-process channel). The TLS test starts a real SuperLink on
127.0.0.1 and tries a plaintext client and a SuperNode whose key was never registered.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import sys
from pathlib import Path

import pytest

from clues.errors import CluesError

GOOD = [
    {"id": "acct-7731-overdraft", "instruction": "Explain this.", "input": "Why was my overdraft fee charged twice?",
     "output": "Two payments cleared on the same day.", "domain": "finance"},
    {"id": "acct-9912-mortgage", "instruction": "Explain this.", "input": "Can I pay my mortgage early?",
     "output": "Yes, most loans allow early repayment.", "domain": "finance"},
]
BAD_NAMES = ["../../evil", "a/b", "/abs", "..", ".hidden", "x" * 65, "a\\b", "line\nbreak", "c:d", ""]


def _jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# -- silo names ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", BAD_NAMES)
def test_a_silo_name_that_could_be_a_path_is_refused_at_every_entry(name, tmp_path):
    from clues.flower.client_app import spec_from_node_config
    from clues.commands.run import config_values
    from clues.config import load_toml, make_config
    from clues.names import check_silo_name

    assert check_silo_name("clinic-2.eu_west", "x") == "clinic-2.eu_west"
    data = str(_jsonl(tmp_path / "bank.jsonl", GOOD))
    with pytest.raises(CluesError, match=r"^--silo .*: (invalid silo name|expected NAME=FILE)"):
        config_values(None, [f"{name}={data}"], {}, {})
    toml = tmp_path / "run.toml"
    toml.write_text(f"[silos]\n{json.dumps(name)} = {json.dumps(data)}\n", encoding="utf-8")
    with pytest.raises(CluesError, match=r"run.toml: \[silos\]: invalid silo name"):
        load_toml(toml)
    public = {"validation": data, "anchor": data, "test": data}
    with pytest.raises(CluesError, match="silos: invalid silo name"):  # a job file, the Python API
        make_config({"silos": {name: data}, **public})
    with pytest.raises(CluesError, match="node config silo-name: invalid silo name"):
        spec_from_node_config({"silo-file": data, "silo-name": name})


@pytest.mark.parametrize("command", ["run", "federate"])
def test_the_cli_refuses_a_path_as_silo_name_before_writing_anything(command, tmp_path, clues_here):
    data = _jsonl(tmp_path / "bank.jsonl", GOOD)
    out = tmp_path / "deep" / "er" / "out"
    code, text = clues_here(command, "--silo", f"../../evil={data}", "--validation", data, "--anchor", data,
                            "--test", data, "--out", out)
    assert code == 1 and "Traceback" not in text
    assert text.strip().splitlines()[-1].startswith("error: --silo '../../evil=") and "invalid silo name '../../evil'" in text
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["bank.jsonl"]  # no out folder, nothing 'evil' anywhere


def test_bench_refuses_a_path_as_silo_name_in_its_config(tmp_path, clues_here):
    data = _jsonl(tmp_path / "bank.jsonl", GOOD)
    config = tmp_path / "bench.toml"
    config.write_text(f'validation = "{data}"\nanchor = "{data}"\ntest = "{data}"\nlabels = "{data}"\n'
                      f'[silos]\n"/tmp/evil" = "{data}"\n', encoding="utf-8")
    code, text = clues_here("bench", "--config", config, "--out", tmp_path / "out")
    assert code == 1 and "bench.toml: [silos]: invalid silo name '/tmp/evil'" in text
    assert not (tmp_path / "out").exists()


# -- failures cross as kinds and counts ------------------------------------------------------------------------


def test_a_failure_inside_a_silo_crosses_the_channel_without_its_private_details(tmp_path, tiny_tokenizer):
    """The in-process transport (merging mode, in-process federations): a silo's own kept file is broken
    (its first record, with an id and text, has a numeric output). The server learns the kind and a
    count, never the record, its id or the silo's paths; the silo's log has the whole message."""
    from rich.console import Console

    from clues import protocol
    from clues.data import load_records
    from clues.protocol import BoundaryLog
    from clues.server.fleet import LocalFleet
    from clues.silo import Silo
    from clues.train import TrainConfig
    from conftest import assert_nothing_private_crossed

    records = load_records(_jsonl(tmp_path / "bank.jsonl", GOOD))
    workdir = tmp_path / "silos" / "bank"
    workdir.mkdir(parents=True)
    _jsonl(workdir / "kept.jsonl", [{**GOOD[0], "output": 3}])
    crossed = []
    fleet = LocalFleet([Silo("bank", records, workdir)], BoundaryLog(tap=lambda silo, direction, blob: crossed.append((direction, blob))),
                       Console(quiet=True))
    request = protocol.Message(protocol.FIT, {"tag": "fl-clues", "subset": "kept", "round": 1, "steps": 1, "lr": 1e-4,
                                              "config": TrainConfig().to_dict()})
    assert fleet.exchange({"bank": request}, 1) == {}
    [failure] = fleet.failures
    assert failure["silo"] == "bank" and failure["reason"] == "DataError: 1 problems in the silo's data (details in the silo's silo-errors.log)"
    assert str(tmp_path) not in json.dumps(fleet.failures)
    replies = [protocol.Message.from_bytes(blob) for direction, blob in crossed if direction == "silo->server"]
    assert [m.kind for m in replies] == [protocol.ERROR]
    raw = b"".join(blob for direction, blob in crossed if direction == "silo->server")
    assert str(workdir).encode() not in raw
    assert_nothing_private_crossed(replies, raw, GOOD, tiny_tokenizer, also=[json.dumps(fleet.failures)])
    assert "kept.jsonl:1: output: expected a string" in (workdir / "silo-errors.log").read_text()


def test_an_unexpected_exception_crosses_as_its_class_name_only(tmp_path, tiny_tokenizer, monkeypatch):
    """The generic branch: a bug inside the silo raises a plain exception whose text quotes a record id
    and its answer. The server learns ``ValueError`` and where the details are, nothing of the text;
    the silo's own log keeps the whole message for its operator."""
    from rich.console import Console

    from clues import protocol
    from clues.data import load_records
    from clues.protocol import BoundaryLog
    from clues.server.fleet import LocalFleet
    from clues.silo import Silo
    from conftest import assert_nothing_private_crossed

    records = load_records(_jsonl(tmp_path / "bank.jsonl", GOOD))
    workdir = tmp_path / "silos" / "bank"
    workdir.mkdir(parents=True)
    silo = Silo("bank", records, workdir)
    leak = f"cannot score record {GOOD[0]['id']}: {GOOD[0]['output']}"

    def broken(message):
        raise ValueError(leak)

    monkeypatch.setattr(silo, "handle", broken)
    crossed = []
    fleet = LocalFleet([silo], BoundaryLog(tap=lambda name, direction, blob: crossed.append((direction, blob))),
                       Console(quiet=True))
    assert fleet.exchange({"bank": protocol.Message(protocol.HELLO, {})}, 1) == {}
    [failure] = fleet.failures
    assert failure["reason"] == "ValueError: details in the silo's silo-errors.log"
    replies = [protocol.Message.from_bytes(blob) for direction, blob in crossed if direction == "silo->server"]
    assert [m.kind for m in replies] == [protocol.ERROR]
    raw = b"".join(blob for direction, blob in crossed if direction == "silo->server")
    assert b"acct-7731" not in raw and b"cleared on the same day" not in raw
    assert_nothing_private_crossed(replies, raw, GOOD, tiny_tokenizer, also=[json.dumps(fleet.failures)])
    assert leak in (workdir / "silo-errors.log").read_text()
    from conftest import assert_crossings_documented

    assert_crossings_documented([{"direction": "silo->server", "kind": m.kind, "meta_keys": list(m.meta),
                                  "tensor_keys": len(m.tensors)} for m in replies])
    # asked directly (as `clues run` asks), the error the operator reads names the log's file; the
    # reason, which goes into results.json, still does not
    from clues.failures import SiloFailure

    with pytest.raises(SiloFailure) as caught:
        fleet.request("bank", protocol.Message(protocol.HELLO, {}))
    assert str(caught.value).endswith(f"ValueError: details in the silo's silo-errors.log ({workdir / 'silo-errors.log'})")
    assert str(tmp_path) not in caught.value.reason


# -- TLS, SuperNode authentication, insecure only by name ---------------------------------------------------------


def test_clues_certs_makes_a_ca_a_superlink_certificate_and_supernode_keys(tmp_path, clues_here):
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

    out = tmp_path / "certs"
    code, text = clues_here("certs", "--out", out, "--host", "coordinator.example.org", "--host", "10.1.2.3",
                            "--silo", "clinic", "--silo", "bank")
    assert code == 0, text
    ca = x509.load_pem_x509_certificate((out / "ca.pem").read_bytes())
    server = x509.load_pem_x509_certificate((out / "server.pem").read_bytes())
    server.verify_directly_issued_by(ca)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"localhost", "coordinator.example.org"} <= set(names.get_values_for_type(x509.DNSName))
    assert {str(ip) for ip in names.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "10.1.2.3"}
    for key in ("ca.key", "server.key", "clinic.key", "bank.key"):
        assert (out / key).stat().st_mode & 0o077 == 0, key  # private keys readable by their owner only
    private = load_ssh_private_key((out / "bank.key").read_bytes(), None)
    assert private.public_key() == load_ssh_public_key((out / "bank.pub").read_bytes())
    code, text = clues_here("certs", "--out", out)  # never overwrites certificates already handed out
    assert code == 1 and "already exists" in text


def test_clues_certs_checks_every_silo_before_it_writes_a_file(tmp_path, clues_here):
    """A repeated --silo, a bad name, or a SuperNode key already there: refused in one line, and the
    folder is left as it was (no CA or server certificate written before the refusal)."""
    for args, message in ((["--silo", "clinic", "--silo", "clinic"], "--silo 'clinic' is given twice"),
                          (["--silo", "clinic", "--silo", "../up"], "--silo")):
        out = tmp_path / f"certs-{len(message)}"
        code, text = clues_here("certs", "--out", out, *args)
        assert code == 1 and message in text and "Traceback" not in text, text
        assert not out.exists()
    out = tmp_path / "keys"
    out.mkdir()
    (out / "bank.key").write_text("an old key")
    code, text = clues_here("certs", "--out", out, "--silo", "clinic", "--silo", "bank")
    assert code == 1 and f"{out / 'bank.key'} already exists" in text, text
    assert sorted(p.name for p in out.iterdir()) == ["bank.key"] and (out / "bank.key").read_text() == "an old key"


def test_insecure_mode_only_by_name_and_with_a_warning(tmp_path):
    from clues.flower.deployment import security_for, superlink_argv, supernode_argv

    said = []
    secure = security_for(tmp_path / "a", ["clinic"], say=said.append)
    assert "--insecure" not in superlink_argv(9999, tmp_path / "db", secure) + supernode_argv("clinic", 9999, "", secure)
    assert "--enable-supernode-auth" in superlink_argv(9999, tmp_path / "db", secure)
    assert said and "self-signed" in said[0]
    plain = security_for(tmp_path / "b", ["clinic"], insecure=True, say=said.append)
    assert "--insecure" in superlink_argv(9999, tmp_path / "db", plain) and said[-1].startswith("warning: --insecure")
    with pytest.raises(CluesError, match="exclude each other"):
        security_for(tmp_path / "c", ["clinic"], certs=tmp_path / "a" / "certs", insecure=True, say=said.append)
    (tmp_path / "mine").mkdir()
    with pytest.raises(CluesError, match=r"--certs .*mine: missing ca.pem, server.pem, server.key"):
        security_for(tmp_path / "d", ["clinic"], certs=tmp_path / "mine", say=said.append)


def _tls_folder(tmp_path, name, *, swap=None, write=None):
    """A copy of one trial TLS folder with one file replaced: by another folder's (``swap``) or by text."""
    import shutil

    from clues.flower.certs import make_certificates

    for trial in ("first", "second"):
        if not (tmp_path / trial).exists():
            make_certificates(tmp_path / trial)
    folder = tmp_path / name
    shutil.copytree(tmp_path / "first", folder)
    if swap:
        shutil.copy(tmp_path / "second" / swap, folder / swap)
    for file, text in (write or {}).items():
        (folder / file).write_text(text)
    return folder


def test_each_tls_misconfiguration_is_named_with_its_file_and_cause_before_anything_starts(tmp_path):
    """A wrong CA, a key of another certificate, an expired or not yet valid certificate, a host the
    certificate does not name, a file that is not PEM: one line each, naming the file, from the check
    `clues federate --engine deployment --certs` runs before it starts a SuperLink."""
    import datetime as dt

    from clues.flower.certs import check_tls_folder
    from clues.flower.deployment import security_for

    good = _tls_folder(tmp_path, "good")
    assert set(check_tls_folder(good)) == {"ca.pem", "server.pem", "server.key"}
    cases = [
        (_tls_folder(tmp_path, "wrong-ca", swap="ca.pem"), {}, r"wrong-ca/server.pem: not signed by the CA in .*wrong-ca/ca.pem"),
        (_tls_folder(tmp_path, "other-key", swap="server.key"), {},
         r"other-key/server.key: this key does not belong to the certificate .*other-key/server.pem"),
        (_tls_folder(tmp_path, "not-pem", write={"server.pem": "hello"}), {}, r"not-pem/server.pem: not a PEM certificate"),
        (_tls_folder(tmp_path, "bad-key", write={"server.key": "hello"}), {}, r"bad-key/server.key: not a PEM private key"),
        (good, {"now": dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=31)}, r"good/ca.pem: the certificate expired on "),
        (good, {"now": dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)}, r"good/ca.pem: the certificate is not valid before"),
        (good, {"host": "superlink.example.org"},
         r"good/server.pem: not valid for the host superlink.example.org \(it names localhost, 127.0.0.1;"),
    ]
    for folder, options, message in cases:
        with pytest.raises(CluesError, match=message):
            check_tls_folder(folder, **options)
    # the deployment runs the same check before it writes or starts anything
    with pytest.raises(CluesError, match=r"wrong-ca/server.pem: not signed by the CA"):
        security_for(tmp_path / "run", ["clinic"], certs=tmp_path / "wrong-ca", say=lambda *a: None)
    assert not (tmp_path / "run").exists()


def test_a_server_certificate_signed_by_another_authority_of_the_same_name_is_refused(tmp_path):
    """Two trial CAs share their subject name; only the signature tells them apart, and it is checked."""
    from cryptography import x509

    from clues.flower.certs import check_tls_folder

    folder = _tls_folder(tmp_path, "twin", swap="ca.pem")
    first = x509.load_pem_x509_certificate((tmp_path / "first" / "ca.pem").read_bytes())
    twin = x509.load_pem_x509_certificate((folder / "ca.pem").read_bytes())
    assert first.subject == twin.subject and first.public_key() != twin.public_key()
    with pytest.raises(CluesError, match="the signature does not verify"):
        check_tls_folder(folder)


def test_a_tls_superlink_refuses_plaintext_and_unregistered_supernodes(tmp_path):
    """A real SuperLink as `clues federate --engine deployment` starts it (TLS, --enable-supernode-auth), on 127.0.0.1."""
    from clues.flower.deployment import (Processes, Security, _wait_port, free_port, register_supernodes, security_for,
                                            superlink_argv, supernode_argv, write_flower_config)
    from clues.flower.certs import make_node_keys

    out = tmp_path / "link"
    security = security_for(out, ["clinic"], say=lambda *a: None)
    port = free_port()
    env = {**os.environ, "FLWR_HOME": str(out / "home"), "FLWR_TELEMETRY_ENABLED": "0",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    write_flower_config(out / "home", port, security)
    procs = Processes(out / "logs", env)
    try:
        link = procs.start("superlink", superlink_argv(port, out / "superlink.db", security))
        _wait_port(port, link, 300, "flower-superlink")  # hang guards, generous for a loaded machine
        register_supernodes(security, env, out)  # clinic's key only
        # an HTTPS client that trusts the trial CA gets an answer; a plaintext one does not
        context = ssl.create_default_context(cafile=str(security.tls["ca.pem"]))
        secure = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
        secure.request("GET", "/")
        assert secure.getresponse().status > 0
        secure.close()  # an open keep-alive connection would hold up the SuperLink's shutdown
        plain = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        with pytest.raises((http.client.HTTPException, ConnectionError, socket.timeout)):
            plain.request("GET", "/")
            plain.getresponse()
        plain.close()
        # a SuperNode with a key the SuperLink never registered is turned away
        stranger = Security(security.tls, make_node_keys(out / "stranger", ["clinic"]))
        node = procs.start("stranger", supernode_argv("clinic", port, "silo-file='/nonexistent.jsonl'", stranger))
        assert node.wait(timeout=300) != 0
        log = (out / "logs" / "superlink.log").read_text()
        assert "No SuperNode found with the given public key" in log and "Activated node_id" not in log
    finally:
        procs.stop()
    assert all(proc.poll() is not None for proc in procs.started)
