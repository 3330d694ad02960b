"""TLS certificates and SuperNode authentication keys for a deployment.

Layout of a certificate directory (what ``fedsys certs init`` and ``fedsys certs allow`` write)::

    ca.crt                      the federation's own CA certificate (every data holder gets it)
    server.crt  server.key      the SuperLink's TLS identity, signed by the CA
    authorized-nodes            allowlist: one OpenSSH public key per line, comment = node name
    nodes/NAME.key  NAME.pub    trials only (``certs node``): a key pair made on the operator's host

The CA's private key goes to a separate CA directory (``--ca-dir``, default ``DIR-ca`` beside
DIR: ``ca.key`` and a copy of ``ca.crt``), meant to be moved offline; ``fedsys server start``
refuses to run while ``ca.key`` is in DIR. A data holder makes its own key pair
(``fedsys certs keygen``) and sends only the ``.pub`` to the operator.

Assumptions: keys come from ``cryptography`` (the OS CSPRNG). Certificates and node keys are
ECDSA P-384 with SHA-384 signatures; node keys are in OpenSSH format, which is what
``flower-supernode --auth-supernode-private-key`` and ``flwr supernode register`` read.
Private keys are created with mode 0600 and nothing is ever overwritten without ``force``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedsys.errors import DeploymentError

CA_CERT, CA_KEY = "ca.crt", "ca.key"
SERVER_CERT, SERVER_KEY = "server.crt", "server.key"
ALLOWLIST = "authorized-nodes"
NODES_DIR = "nodes"
LOOPBACK_NAMES = ("localhost",)
LOOPBACK_IPS = ("127.0.0.1", "::1")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_CURVE = ec.SECP384R1()


@dataclass(frozen=True)
class CertPaths:
    """Files of a certificate directory."""

    directory: Path

    @property
    def ca_cert(self) -> Path:
        """The CA certificate (give it to every data holder)."""
        return self.directory / CA_CERT

    @property
    def ca_key(self) -> Path:
        """The CA private key (only in a CA directory, kept offline; never beside server.key)."""
        return self.directory / CA_KEY

    @property
    def server_cert(self) -> Path:
        """The SuperLink's certificate."""
        return self.directory / SERVER_CERT

    @property
    def server_key(self) -> Path:
        """The SuperLink's TLS private key."""
        return self.directory / SERVER_KEY

    @property
    def allowlist(self) -> Path:
        """The authorized-nodes file."""
        return self.directory / ALLOWLIST


@dataclass(frozen=True)
class NodeKey:
    """A node's authentication key pair on disk."""

    name: str
    private_key: Path
    public_key: Path


@dataclass(frozen=True)
class AllowedNode:
    """One allowlist entry."""

    name: str
    public_key: str  # OpenSSH line without the comment

    def line(self) -> str:
        """The entry as written in the authorized-nodes file."""
        return f"{self.public_key} {self.name}"


def default_ca_dir(directory: Path) -> Path:
    """Where ``certs init`` puts the CA key unless told otherwise: ``DIR-ca`` beside ``DIR``."""
    return directory.parent / f"{directory.name}-ca"


def init_certs(
    directory: Path,
    *,
    server_host: str,
    ca_dir: Path | None = None,
    server_ips: Sequence[str] = (),
    loopback: bool = True,
    valid_days: int = 365,
    force: bool = False,
) -> CertPaths:
    """Create a CA and a SuperLink certificate signed by it.

    Args:
        directory: where to write ca.crt/server.crt/server.key (what the server uses).
        server_host: DNS name (or IP) nodes use to reach the SuperLink.
        server_ips: further IP addresses to put in the certificate.
        loopback: also cover localhost/127.0.0.1/::1 (the ServerApp reaches the SuperLink there).
        valid_days: lifetime of both certificates.
        ca_dir: where to write ca.key (0600, directory 0700) and a copy of ca.crt; must differ
            from ``directory``; default :func:`default_ca_dir`. Move it offline afterwards.
        force: replace existing files.

    Raises:
        DeploymentError: a file exists and ``force`` is false, a name/IP is invalid, or
            ``ca_dir`` is ``directory``.
    """
    paths = CertPaths(directory)
    ca = CertPaths(ca_dir if ca_dir is not None else default_ca_dir(directory))
    if ca.directory.resolve() == directory.resolve():
        raise DeploymentError(f"--ca-dir must not be the server's certificate directory, got {ca.directory}")
    _ensure_free([paths.ca_cert, ca.ca_key, ca.ca_cert, paths.server_cert, paths.server_key], force=force)
    now = dt.datetime.now(dt.UTC)
    ca_key, ca_cert = make_ca(f"fedsys CA for {server_host}", not_before=now, valid_days=valid_days)
    names, ips = server_names(server_host, server_ips, loopback=loopback)
    key, cert = issue_server_cert(
        ca_key, ca_cert, names=names, ips=ips, not_before=now, valid_days=valid_days
    )
    directory.mkdir(parents=True, exist_ok=True)
    ca.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca.directory.chmod(0o700)
    write_private(ca.ca_key, private_pem(ca_key), force=force)
    write_public(ca.ca_cert, cert_pem(ca_cert), force=force)
    write_public(paths.ca_cert, cert_pem(ca_cert), force=force)
    write_private(paths.server_key, private_pem(key), force=force)
    write_public(paths.server_cert, cert_pem(cert), force=force)
    return paths


def server_names(host: str, ips: Sequence[str], *, loopback: bool) -> tuple[list[str], list[str]]:
    """Split the SuperLink's names into DNS names and IP addresses (deduplicated, ordered)."""
    names: list[str] = []
    addresses: list[str] = []
    for item in [host, *ips, *(LOOPBACK_NAMES + LOOPBACK_IPS if loopback else ())]:
        target = addresses if _is_ip(item) else names
        if not target.count(item):
            target.append(item)
    for ip in ips:
        if not _is_ip(ip):
            raise DeploymentError(f"--server-ip must be an IP address, got {ip!r}")
    return names, addresses


def make_ca(
    common_name: str, *, not_before: dt.datetime, valid_days: int
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A new self-signed CA that may sign end-entity certificates only."""
    _check_days(valid_days)
    key = ec.generate_private_key(_CURVE)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        _builder(subject, subject, key.public_key(), not_before, valid_days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA384())
    )
    return key, cert


def issue_server_cert(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    *,
    names: Sequence[str],
    ips: Sequence[str],
    not_before: dt.datetime,
    valid_days: int,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A TLS server certificate for ``names``/``ips`` signed by the CA."""
    _check_days(valid_days)
    if not names and not ips:
        raise DeploymentError("a server certificate needs at least one host name or IP address")
    key = ec.generate_private_key(_CURVE)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, (list(names) or list(ips))[0])])
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        _builder(subject, ca_cert.subject, key.public_key(), not_before, valid_days)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    return key, cert


def load_ca(directory: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """Read the CA key and certificate of a certificate directory."""
    paths = CertPaths(directory)
    try:
        key = serialization.load_pem_private_key(paths.ca_key.read_bytes(), password=None)
        cert = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    except (OSError, ValueError, UnsupportedAlgorithm) as err:
        raise DeploymentError(f"cannot read the CA in {directory}: {err}") from err
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise DeploymentError(f"{paths.ca_key} is not an EC private key")
    return key, cert


def generate_node_key(private_key: Path, *, name: str, force: bool = False) -> NodeKey:
    """Create a node's key pair where the node runs: ``KEY`` (OpenSSH, 0600) and ``KEY.pub``.

    This is the data holder's side of ``fedsys certs keygen``: the private key never leaves
    the holder's machine; only ``KEY.pub`` goes to the operator (``fedsys certs allow``).

    Raises:
        DeploymentError: the name is invalid, or a file exists without ``force``.
    """
    _check_name(name)
    node = NodeKey(name, private_key, private_key.with_name(private_key.name + ".pub"))
    if private_key.suffix == ".key":
        node = NodeKey(name, private_key, private_key.with_suffix(".pub"))
    _ensure_free([node.private_key, node.public_key], force=force)
    key = ec.generate_private_key(_CURVE)
    node.private_key.parent.mkdir(parents=True, exist_ok=True)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    write_private(node.private_key, private, force=force)
    write_public(node.public_key, f"{openssh_public(key.public_key())} {name}\n".encode(), force=force)
    return node


def create_node_key(directory: Path, name: str, *, force: bool = False) -> NodeKey:
    """Trials only: create ``nodes/NAME.key``/``NAME.pub`` on the operator's machine and allowlist it.

    A real data holder runs :func:`generate_node_key` itself and sends only the public key.

    Raises:
        DeploymentError: the name is invalid, or a file/allowlist entry exists without ``force``.
    """
    _check_name(name)
    nodes = directory / NODES_DIR
    _ensure_free([nodes / f"{name}.key", nodes / f"{name}.pub"], force=force)
    if not force and any(entry.name == name for entry in read_allowlist(directory)):
        raise DeploymentError(f"{CertPaths(directory).allowlist} already lists node {name!r} (use --force)")
    node = generate_node_key(directory / NODES_DIR / f"{name}.key", name=name, force=force)
    authorize_node(directory, name, node.public_key.read_text(encoding="utf-8"), force=True)
    return node


def authorize_node(directory: Path, name: str, public_key: str, *, force: bool = False) -> AllowedNode:
    """Add (or with ``force`` replace) a node's OpenSSH public key in the allowlist."""
    _check_name(name)
    entry = AllowedNode(name, parse_node_public_key(public_key))
    entries = read_allowlist(directory)
    if any(e.name == name for e in entries) and not force:
        raise DeploymentError(f"{CertPaths(directory).allowlist} already lists node {name!r} (use --force)")
    kept = [e for e in entries if e.name != name]
    if any(e.public_key == entry.public_key for e in kept):
        raise DeploymentError(
            f"this public key is already allowlisted under another name: {public_key[:40]}..."
        )
    directory.mkdir(parents=True, exist_ok=True)
    text = "".join(f"{e.line()}\n" for e in [*kept, entry])
    write_public(CertPaths(directory).allowlist, text.encode(), force=True)
    return entry


def read_allowlist(directory: Path) -> list[AllowedNode]:
    """The allowlisted nodes of a certificate directory (empty if none)."""
    path = CertPaths(directory).allowlist
    if not path.exists():
        return []
    entries = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 3:
            raise DeploymentError(f"{path}:{number}: expected 'KEY-TYPE BASE64 NAME', got {line!r}")
        entries.append(AllowedNode(parts[2], parse_node_public_key(" ".join(parts[:2]))))
    return entries


def parse_node_public_key(text: str) -> str:
    """Validate an OpenSSH ECDSA public key line; return it without its comment."""
    try:
        key = serialization.load_ssh_public_key(text.strip().encode())
    except (ValueError, TypeError, UnsupportedAlgorithm) as err:
        raise DeploymentError(f"not an OpenSSH public key: {text.strip()[:60]!r}") from err
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise DeploymentError(f"node keys must be ECDSA (NIST curve), got {type(key).__name__}")
    return openssh_public(key)


def openssh_public(key: ec.EllipticCurvePublicKey) -> str:
    """The OpenSSH line of an EC public key (no comment)."""
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """Unencrypted PKCS#8 PEM (what the SuperLink's --ssl-keyfile reads)."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    """PEM encoding of a certificate."""
    return cert.public_bytes(serialization.Encoding.PEM)


def write_private(path: Path, data: bytes, *, force: bool = False) -> None:
    """Write a secret file readable by its owner only (0600 from the first byte)."""
    _write(path, data, mode=0o600, force=force)


def write_public(path: Path, data: bytes, *, force: bool = False) -> None:
    """Write a non-secret file (0644)."""
    _write(path, data, mode=0o644, force=force)


def _write(path: Path, data: bytes, *, mode: int, force: bool) -> None:
    if path.exists() and not force:
        raise DeploymentError(f"{path} already exists (use --force to replace it)")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    # O_EXCL + explicit mode: the secret never exists with wider permissions, even briefly.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)  # the umask may have narrowed it further; keep exactly `mode`
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _ensure_free(paths: Sequence[Path], *, force: bool) -> None:
    if force:
        return
    for path in paths:
        if path.exists():
            raise DeploymentError(f"{path} already exists (use --force to replace it)")


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    not_before: dt.datetime,
    valid_days: int,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before - dt.timedelta(minutes=5))  # tolerate small clock skew
        .not_valid_after(not_before + dt.timedelta(days=valid_days))
    )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _check_name(name: str) -> None:
    if not _NAME_RE.match(name):
        raise DeploymentError(f"node name must match {_NAME_RE.pattern}, got {name!r}")


def _check_days(valid_days: int) -> None:
    if valid_days < 1:
        raise DeploymentError(f"certificate validity must be >= 1 day, got {valid_days}")
