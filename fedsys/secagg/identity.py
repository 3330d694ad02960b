"""Long-term identity keys and signatures for SecAgg+ against a malicious server.

Bonawitz et al. CCS 2017, Sec. 4 and Fig. 4 (active adversary): every client signs its advertised
public keys with a long-term signing key, and every peer verifies those signatures against a PKI the
server does not control, so the server cannot add Sybil peers or substitute keys; in the
ConsistencyCheck round each survivor signs the survivor set U3. Deployment uses the data holder's
node-auth key (ECDSA P-384 with SHA-384, OpenSSH format); simulation may use Ed25519 (cheaper).

Trust root: a holder-side set of peers' identity public keys (node config ``peers``), exchanged and
verified out of band between the holders. The operator's SuperNode allowlist is *not* a trust root:
in this threat model the operator is the adversary.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from fedsys.errors import ConfigError, ProtocolError
from fedsys.secagg.primitives import RoundContext

_DOMAIN = b"fedsys-secagg-v1"
_SPKI = serialization.PublicFormat.SubjectPublicKeyInfo
SigningKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class Identity:
    """A client's long-term signing key; ``public`` is its DER SubjectPublicKeyInfo encoding."""

    private: SigningKey
    public: bytes

    def sign(self, payload: bytes) -> bytes:
        """Sign ``payload`` (Ed25519, or ECDSA P-384 over SHA-384)."""
        if isinstance(self.private, ed25519.Ed25519PrivateKey):
            return self.private.sign(payload)
        return self.private.sign(payload, ec.ECDSA(hashes.SHA384()))


def identity_from_key(private: SigningKey) -> Identity:
    """Wrap a signing key; only Ed25519 and ECDSA P-384 are accepted.

    Raises:
        ConfigError: another key type or curve.
    """
    if isinstance(private, ec.EllipticCurvePrivateKey) and not isinstance(private.curve, ec.SECP384R1):
        raise ConfigError(f"secagg identity keys must be ECDSA P-384 or Ed25519, got {private.curve.name}")
    if not isinstance(private, (ed25519.Ed25519PrivateKey, ec.EllipticCurvePrivateKey)):
        raise ConfigError(f"secagg identity keys must be P-384 or Ed25519, got {type(private).__name__}")
    public = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return Identity(private=private, public=public)


def generate_identity() -> Identity:
    """A fresh Ed25519 identity (simulated PKI only; deployment loads the node-auth key)."""
    return identity_from_key(ed25519.Ed25519PrivateKey.generate())


def simulated_identity(simulation_pki_seed: bytes, client: int) -> Identity:
    """The Ed25519 identity of virtual client ``client`` in a simulated PKI (simulation only).

    Derived as SHA-256(domain, seed, client), so that every virtual client of one run can rebuild
    every other's public key from the run's seed alone. Whoever holds the seed holds every key: the
    simulation harness plays all holders, a deployment never uses this.
    """
    digest = hashlib.sha256(_DOMAIN + b"/simulated-pki" + simulation_pki_seed + struct.pack(">Q", client))
    return identity_from_key(ed25519.Ed25519PrivateKey.from_private_bytes(digest.digest()))


def load_identity(path: Path) -> Identity:
    """Load an OpenSSH private key (the SuperNode's ``--auth-supernode-private-key``).

    Raises:
        ConfigError: unreadable, encrypted, or not ECDSA P-384 / Ed25519.
    """
    try:
        private = serialization.load_ssh_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError, UnsupportedAlgorithm) as err:
        raise ConfigError(f"cannot load secagg identity key {str(path)!r}: {err}") from err
    if not isinstance(private, (ed25519.Ed25519PrivateKey, ec.EllipticCurvePrivateKey)):
        raise ConfigError(f"secagg identity key {str(path)!r} is a {type(private).__name__}")
    return identity_from_key(private)


def load_trusted_peers(path: Path) -> frozenset[bytes]:
    """Read the holder's trusted peer identities: one OpenSSH public key per line (``#`` comments).

    Raises:
        ConfigError: unreadable file, a malformed line, or an unsupported key type.
    """
    try:
        lines = path.read_text().splitlines()
    except OSError as err:
        raise ConfigError(f"cannot read secagg peers file {str(path)!r}: {err}") from err
    trusted = set()
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            key = serialization.load_ssh_public_key(line.strip().encode())
        except (ValueError, UnsupportedAlgorithm) as err:
            raise ConfigError(f"{str(path)!r} line {number} is not an OpenSSH public key: {line!r}") from err
        if isinstance(key, ec.EllipticCurvePublicKey) and not isinstance(key.curve, ec.SECP384R1):
            raise ConfigError(f"{str(path)!r} line {number}: curve {key.curve.name} is not P-384")
        if not isinstance(key, (ed25519.Ed25519PublicKey, ec.EllipticCurvePublicKey)):
            raise ConfigError(f"{str(path)!r} line {number}: {type(key).__name__} is not supported")
        trusted.add(key.public_bytes(serialization.Encoding.DER, _SPKI))
    if not trusted:
        raise ConfigError(f"secagg peers file {str(path)!r} lists no keys")
    return frozenset(trusted)


def verify(public: bytes, signature: bytes, payload: bytes) -> bool:
    """Whether ``signature`` on ``payload`` verifies under the DER public key ``public``."""
    try:
        key = serialization.load_der_public_key(public)
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, payload)
        elif isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP384R1):
            key.verify(signature, payload, ec.ECDSA(hashes.SHA384()))
        else:
            return False
    except (InvalidSignature, ValueError, UnsupportedAlgorithm):
        return False
    return True


def participants_digest(participants: Iterable[int]) -> bytes:
    """SHA-256 of the sorted participant ids: binds a signature to the round's cohort as the
    signer saw it, so the server cannot show two clients different cohorts."""
    ids = sorted(participants)
    return hashlib.sha256(_DOMAIN + b"/cohort" + struct.pack(f">{len(ids)}Q", *ids)).digest()


def keys_payload(
    context: RoundContext, *, sender: int, cohort: bytes, encryption: bytes, masking: bytes
) -> bytes:
    """What a client signs in AdvertiseKeys (Bonawitz et al. Fig. 4 round 0: sigma_u over c_u, s_u)."""
    header = struct.pack(">QQQ", context.run_id, context.round, sender)
    return _DOMAIN + b"/keys" + header + cohort + encryption + masking


def survivors_payload(context: RoundContext, *, cohort: bytes, survivors: Sequence[int]) -> bytes:
    """What a survivor signs in ConsistencyCheck (Bonawitz et al. Fig. 4 round 3: sigma'_u over U3).

    Raises:
        ProtocolError: an id does not fit 64 bits.
    """
    ids = sorted(survivors)
    try:
        body = struct.pack(f">QQQ{len(ids)}Q", context.run_id, context.round, len(ids), *ids)
    except struct.error as err:
        raise ProtocolError(f"survivor ids must fit 64 bits, got {ids}") from err
    return _DOMAIN + b"/survivors" + cohort + body
