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
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
               .sign(ca_key, hashes.SHA384()))
    key = ec.generate_private_key(ec.SECP384R1())
    cert = (x509.CertificateBuilder().subject_name(_name("clues superlink")).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(until)
            .add_extension(san, critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA384()))
    pem = serialization.Encoding.PEM
    plain = serialization.NoEncryption()
    paths[CA].write_bytes(ca_cert.public_bytes(pem))
    paths[SERVER].write_bytes(cert.public_bytes(pem))
    _write_private(paths[CA_KEY], ca_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, plain))
    _write_private(paths[SERVER_KEY], key.private_bytes(pem, serialization.PrivateFormat.PKCS8, plain))
    return paths


def node_key_paths(out: str | Path, silos: Iterable[str], overwrite: bool = False) -> dict[str, tuple[Path, Path]]:
    """Where each SuperNode's key pair goes, checked before anything is written: a bad or repeated silo
    name, or a key already there (unless ``overwrite``), is refused while the folder is still untouched."""
    out, pairs = Path(out), {}
    for silo in silos:
        check_silo_name(silo, "--silo")
        if silo in pairs:
            raise CluesError(f"--silo {silo!r} is given twice")
        pairs[silo] = (out / f"{silo}.key", out / f"{silo}.pub")
        if pairs[silo][0].exists() and not overwrite:
            raise CluesError(f"{pairs[silo][0]} already exists: choose another --out, or delete the old key first")
    return pairs


def make_node_keys(out: str | Path, silos: Iterable[str], overwrite: bool = False) -> dict[str, tuple[Path, Path]]:
    """One EC P-384 key pair per SuperNode (OpenSSH format): ``{silo: (private key, public key)}``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pairs = node_key_paths(out, silos, overwrite)
    Path(out).mkdir(parents=True, exist_ok=True)
    for silo, (private, public) in pairs.items():
        key = ec.generate_private_key(ec.SECP384R1())
        _write_private(private, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                                  serialization.NoEncryption()))
        public.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
                           + f" clues-{silo}\n".encode())
    return pairs


def check_tls_folder(folder: str | Path, host: str = "127.0.0.1", now: dt.datetime | None = None) -> dict[str, Path]:
    """The three files a SuperLink needs in ``folder`` (absolute: Flower's helpers run elsewhere), checked
    before anything starts: each parses, the key is the certificate's, the certificate is signed by the
    CA, is valid ``now`` and names ``host``. A TLS mistake found later surfaces only as a truncated
    Flower box that reads like a network problem; here it is one line naming the file and the cause.
    The whole chain is then verified by ``cryptography``'s own verifier (RFC 5280 server profile)."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

    folder = Path(folder).expanduser().resolve()
    paths = {name: folder / name for name in TLS_FILES}
    missing = [name for name, path in paths.items() if not path.is_file()]
    if missing:
        raise CluesError(f"--certs {folder}: missing {', '.join(missing)} (need {', '.join(TLS_FILES)}; "
                         f"make trial ones with `clues certs --out {folder}`)")
    ca, server, key = _certificate(paths[CA]), _certificate(paths[SERVER]), _private_key(paths[SERVER_KEY])
    if _public(key.public_key()) != _public(server.public_key()):
        raise CluesError(f"{paths[SERVER_KEY]}: this key does not belong to the certificate {paths[SERVER]}")
    now = now or dt.datetime.now(dt.timezone.utc)
    for path, cert in ((paths[CA], ca), (paths[SERVER], server)):
        if now > cert.not_valid_after_utc:
            raise CluesError(f"{path}: the certificate expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
        if now < cert.not_valid_before_utc:
            raise CluesError(f"{path}: the certificate is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
    try:
        server.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as ex:  # a wrong issuer name; another key type; a forged signature
        raise CluesError(f"{paths[SERVER]}: not signed by the CA in {paths[CA]} ({_cause(ex)})") from None
    names = _host_names(server)
    if host not in names:
        raise CluesError(f"{paths[SERVER]}: not valid for the host {host} (it names {', '.join(names) or 'no host'}; "
                         f"make one with `clues certs --host {host}`)")
    target = _x509_host(host)
    try:
        PolicyBuilder().store(Store([ca])).time(now).build_server_verifier(target).verify(server, [])
    except VerificationError as ex:
        raise CluesError(f"{paths[SERVER]}: refused by TLS verification against {paths[CA]}: {ex}") from None
    return paths


def _certificate(path: Path):
    from cryptography import x509

    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError:
        raise CluesError(f"{path}: not a PEM certificate") from None


def _private_key(path: Path):
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        return load_pem_private_key(path.read_bytes(), password=None)
    except TypeError:
        raise CluesError(f"{path}: the private key is encrypted; give it without a passphrase") from None
    except ValueError:
        raise CluesError(f"{path}: not a PEM private key") from None


def _public(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _cause(ex: Exception) -> str:
    return str(ex) or "the signature does not verify"


def _host_names(cert) -> list[str]:
    """The DNS names and IP addresses of the certificate's subject alternative names."""
    from cryptography import x509

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [*san.get_values_for_type(x509.DNSName), *(str(ip) for ip in san.get_values_for_type(x509.IPAddress))]


def _x509_host(host: str):
    """``host`` as the name a TLS client checks: an IP address or a DNS name."""
    from cryptography import x509

    return x509.IPAddress(ipaddress.ip_address(host)) if _is_ip(host) else x509.DNSName(host)
