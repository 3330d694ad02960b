"""The data holder's SecAgg+ identity and the peers it trusts (the PKI of Bonawitz et al. CCS 2017, Sec. 4).

Against a malicious server each holder signs its round keys with a long-term identity key and checks
its peers' signatures against a set of identity public keys that the *holders* exchanged and verified
among themselves, out of band (node config ``peers``); the operator's SuperNode allowlist is not a trust
root, the operator being the adversary. A deployed holder uses its node-auth key (node config
``identity-key``, written by ``fedsys client start --key``). In simulation the harness plays every
holder: it draws one PKI seed per run (``SIMULATED_PKI_SEED`` in the ClientApp's ``local`` settings)
and each virtual client derives the Ed25519 identity of its partition id, and every other's public key.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from fedsys.errors import ConfigError
from fedsys.secagg.identity import Identity, load_identity, load_trusted_peers, simulated_identity

SIMULATED_PKI_SEED = "simulated-pki-seed"
"""``local`` key (hex) of a simulation's PKI seed; never part of the server's run config."""


@dataclass(frozen=True)
class HolderPki:
    """This holder's identity and the DER public keys of the identities it trusts."""

    identity: Identity
    trusted: frozenset[bytes]


def deployed_pki(identity_key: Path, peers: Path) -> HolderPki:
    """Load a deployed holder's identity key and peers file.

    Raises:
        ConfigError: either file cannot be read or holds an unsupported key.
    """
    return HolderPki(load_identity(identity_key), load_trusted_peers(peers))


def simulated_pki(local: Mapping[str, object], *, partition_id: int, num_partitions: int) -> HolderPki | None:
    """The simulated PKI of virtual client ``partition_id``; None when the harness set up none.

    Raises:
        ConfigError: a malformed seed, or a partition outside [0, num_partitions).
    """
    seed = local.get(SIMULATED_PKI_SEED)
    if seed is None:
        return None
    if not 0 <= partition_id < num_partitions:
        raise ConfigError(f"partition id {partition_id} is outside the {num_partitions} virtual clients")
    try:
        raw = bytes.fromhex(str(seed))
    except ValueError as err:
        raise ConfigError(f"{SIMULATED_PKI_SEED} must be hex, got {seed!r}") from err
    return HolderPki(simulated_identity(raw, partition_id), _simulated_peers(raw, num_partitions))


@functools.lru_cache(maxsize=8)
def _simulated_peers(seed: bytes, num_partitions: int) -> frozenset[bytes]:
    return frozenset(simulated_identity(seed, p).public for p in range(num_partitions))
