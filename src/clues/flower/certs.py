"""Self-signed TLS certificates and SuperNode key pairs for a trial federation (`clues certs`).

Flower 1.42 encrypts every connection (SuperNode -> SuperLink, ``flwr`` -> SuperLink) with TLS
unless ``--insecure`` is given, and can refuse SuperNodes whose public key was not registered
(``flower-superlink --enable-supernode-auth``, ``flwr supernode register``). Both need files a
consortium would normally get from its own PKI; this module makes them for a trial:

- ``ca.pem`` / ``ca.key``: a private certificate authority (give ``ca.pem`` to every SuperNode and
  to whoever runs ``flwr``; keep ``ca.key`` offline);
- ``server.pem`` / ``server.key``: the SuperLink's certificate, signed by the CA, valid for
  ``localhost``, ``127.0.0.1`` and the host names or addresses given;
- ``<silo>.key`` / ``<silo>.pub``: one SuperNode's EC P-384 key pair in OpenSSH format (what
  ``--auth-supernode-private-key`` and ``flwr supernode register`` read).

Private keys are written with mode 0600. ``cryptography`` is a dependency of Flower, so it is
present wherever the federated mode is installed.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from pathlib import Path
from typing import Iterable

from clues.errors import CluesError
from clues.names import check_silo_name

CA, CA_KEY, SERVER, SERVER_KEY = "ca.pem", "ca.key", "server.pem", "server.key"
TLS_FILES = (CA, SERVER, SERVER_KEY)  # what a SuperLink needs (``--certs DIR`` of `clues federate --engine deployment`)
_HOST = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252}[A-Za-z0-9])?")


def _write_private(path: Path, data: bytes) -> None:
    """A private key: created 0600 from the start, never world-readable even for a moment."""
    if path.exists():
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _name(common_name: str):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "clues trial federation"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _san(hosts: Iterable[str]):
    from cryptography import x509

    entries = []
    for host in dict.fromkeys(["localhost", "127.0.0.1", *hosts]):
        if _is_ip(host):
            entries.append(x509.IPAddress(ipaddress.ip_address(host)))
        elif _HOST.fullmatch(host):
            entries.append(x509.DNSName(host))
        else:
            raise CluesError(f"--host {host!r}: expected a host name or an IP address")
    return x509.SubjectAlternativeName(entries)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


# Trial certificates: ten years at most (a date far beyond that overflows and means nothing here).
MAX_DAYS = 3650


def make_certificates(out: str | Path, hosts: Iterable[str] = (), days: int = 30, overwrite: bool = False) -> dict[str, Path]:
    """A CA and a SuperLink certificate for ``localhost``, ``127.0.0.1`` and ``hosts``; returns the paths.

    Short-lived (``days``) on purpose: these are for a trial, not for a production federation. Existing
    files are kept unless ``overwrite`` (certificates already handed out must not be replaced by accident).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    if not 1 <= days <= MAX_DAYS:
        raise CluesError(f"--days must be between 1 and {MAX_DAYS} (ten years), got {days}")
    out = Path(out)
    paths = {name: out / name for name in (CA, CA_KEY, SERVER, SERVER_KEY)}
    existing = [str(path) for path in paths.values() if path.exists()]
    if existing and not overwrite:
        raise CluesError(f"{existing[0]} already exists: choose another --out, or delete the old certificates first")
    san = _san(hosts)
    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)  # tolerate small clock skew
    until = now + dt.timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_cert = (x509.CertificateBuilder().subject_name(_name("clues trial CA")).issuer_name(_name("clues trial CA"))
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now).not_valid_after(until)
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                            key_encipherment=False, data_encipherment=False, key_agreement=False,
                                            encipher_only=False, decipher_only=False), critical=True)
               .sign(ca_key, hashes.SHA384()))
    key = ec.generate_private_key(ec.SECP384R1())
    cert = (x509.CertificateBuilder().subject_name(_name("clues superlink")).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(until)
            .add_extension(san, critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA384()))
    pem = serialization.Encoding.PEM
    plain = serialization.NoEncryption()
    paths[CA].write_bytes(ca_cert.public_bytes(pem))
    paths[SERVER].write_bytes(cert.public_bytes(pem))
    _write_private(paths[CA_KEY], ca_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, plain))
    _write_private(paths[SERVER_KEY], key.private_bytes(pem, serialization.PrivateFormat.PKCS8, plain))
    return paths


def make_node_keys(out: str | Path, silos: Iterable[str], overwrite: bool = False) -> dict[str, tuple[Path, Path]]:
    """One EC P-384 key pair per SuperNode (OpenSSH format): ``{silo: (private key, public key)}``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pairs = {}
    for silo in silos:
        check_silo_name(silo, "--silo")
        key = ec.generate_private_key(ec.SECP384R1())
        private, public = out / f"{silo}.key", out / f"{silo}.pub"
        if private.exists() and not overwrite:
            raise CluesError(f"{private} already exists: choose another --out, or delete the old key first")
        _write_private(private, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                                  serialization.NoEncryption()))
        public.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
                           + f" clues-{silo}\n".encode())
        pairs[silo] = (private, public)
    return pairs


def check_tls_folder(folder: str | Path) -> dict[str, Path]:
    """The three files a SuperLink needs in ``folder`` (absolute: Flower's helpers run elsewhere); a
    missing one is a one-line error naming it."""
    folder = Path(folder).expanduser().resolve()
    paths = {name: folder / name for name in TLS_FILES}
    missing = [name for name, path in paths.items() if not path.is_file()]
    if missing:
        raise CluesError(f"--certs {folder}: missing {', '.join(missing)} (need {', '.join(TLS_FILES)}; "
                         f"make trial ones with `clues certs --out {folder}`)")
    return paths
