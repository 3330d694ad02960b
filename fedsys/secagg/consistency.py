"""A client's checks against a malicious server: signed keys and the ConsistencyCheck round.

Bonawitz et al. CCS 2017, Fig. 4 (active security), rounds 0-4, as SecAgg+ needs them (Bell et al. CCS
2020, Sec. 4): every advertised key pair is signed by its owner's long-term identity, bound to the round
and to the cohort the owner was shown, and every peer's signature is checked against the holder's own
trusted identities before anything is shared; before unmasking, each survivor signs the survivor set U3
and a client reveals shares only for the exact U3 it signed, backed by at least t signatures of distinct
trusted peers that saw the same cohort. With t above :func:`fedsys.secagg.graph.malicious_threshold`,
two different U3 cannot both gather t signatures unless an honest client signed twice, so no two honest
holders disagree on whether a peer survived, and none reveals both shares of one peer. Every check
fails closed with ``ProtocolError``, before any share is revealed.
"""

from __future__ import annotations

from collections.abc import Mapping, Set

from fedsys.errors import ProtocolError
from fedsys.secagg.graph import malicious_threshold
from fedsys.secagg.identity import Identity, keys_payload, participants_digest, survivors_payload, verify
from fedsys.secagg.messages import PeerKeys, SetupRequest


def cohort_of(setup: SetupRequest) -> bytes:
    """Digest of the cohort as this client was shown it (its neighbours and itself)."""
    return participants_digest((*setup.neighbours, setup.recipient))


def check_malicious_setup(setup: SetupRequest) -> None:
    """Demand a threshold that a malicious server cannot split (see :mod:`fedsys.secagg.graph`).

    Raises:
        ProtocolError: t below the malicious bound for the cohort shown.
    """
    needed = malicious_threshold(len(setup.neighbours) + 1)
    if setup.threshold < needed:
        raise ProtocolError(
            f"against a malicious server a cohort of {len(setup.neighbours) + 1} needs threshold "
            f">= {needed}, the server asked for {setup.threshold}; refusing"
        )


def sign_keys(identity: Identity, setup: SetupRequest, *, encryption: bytes, masking: bytes) -> PeerKeys:
    """This client's public keys with its identity and signature (Fig. 4 round 0)."""
    payload = keys_payload(
        setup.context, sender=setup.recipient, cohort=cohort_of(setup), encryption=encryption, masking=masking
    )
    return PeerKeys(encryption, masking, identity.public, identity.sign(payload))


def check_peer_keys(
    peer_keys: Mapping[int, PeerKeys], setup: SetupRequest, *, own: Identity, trusted: Set[bytes]
) -> None:
    """Verify every peer's keys were signed, for this round and cohort, by a distinct trusted identity.

    Raises:
        ProtocolError: an untrusted, repeated or own identity, or a signature that does not verify
            (a Sybil peer, a substituted key, or a peer shown another cohort).
    """
    cohort = cohort_of(setup)
    seen = {own.public}
    for peer, keys in sorted(peer_keys.items()):
        if keys.identity not in trusted:
            raise ProtocolError(
                f"peer {peer}'s identity key is not among this holder's trusted peers; refusing"
            )
        if keys.identity in seen:
            raise ProtocolError(f"peer {peer} reuses another participant's identity key; refusing")
        seen.add(keys.identity)
        payload = keys_payload(
            setup.context, sender=peer, cohort=cohort, encryption=keys.encryption, masking=keys.masking
        )
        if not verify(keys.identity, keys.signature, payload):
            raise ProtocolError(f"peer {peer}'s keys are not signed by its identity for this round; refusing")


def sign_survivors(
    identity: Identity, setup: SetupRequest, survivors: tuple[int, ...], *, alive_peers: Set[int]
) -> bytes:
    """Sign the server's claimed U3 (Fig. 4 round 3) after checking it is plausible.

    Args:
        identity: this client's identity.
        setup: the round's setup.
        survivors: U3 as the server claims it.
        alive_peers: the peers whose envelopes this client received (U2 minus itself).

    Raises:
        ProtocolError: U3 omits this client, names clients that never shared keys, repeats ids, or is
            smaller than t.
    """
    members = frozenset(survivors)
    if len(members) != len(survivors) or setup.recipient not in members:
        raise ProtocolError(f"survivor set {sorted(survivors)} repeats ids or omits client {setup.recipient}")
    if not members - {setup.recipient} <= alive_peers:
        raise ProtocolError(
            f"survivor set names clients {sorted(members - alive_peers - {setup.recipient})} "
            "that did not share keys with this client; refusing"
        )
    if len(members) < setup.threshold:
        raise ProtocolError(f"survivor set of {len(members)} is below threshold {setup.threshold}; refusing")
    return identity.sign(survivors_payload(setup.context, cohort=cohort_of(setup), survivors=survivors))


def check_survivor_signatures(
    signatures: Mapping[int, bytes],
    setup: SetupRequest,
    survivors: tuple[int, ...],
    *,
    own: Identity,
    peer_keys: Mapping[int, PeerKeys],
) -> None:
    """Demand t valid signatures on the exact U3 this client signed, from distinct survivors (Fig. 4 round 4).

    Raises:
        ProtocolError: fewer than t valid signatures; the server showed others a different set.
    """
    payload = survivors_payload(setup.context, cohort=cohort_of(setup), survivors=survivors)
    identities = {setup.recipient: own.public} | {p: keys.identity for p, keys in peer_keys.items()}
    valid = {
        identities[signer]
        for signer, signature in signatures.items()
        if signer in survivors and signer in identities and verify(identities[signer], signature, payload)
    }
    if len(valid) < setup.threshold:
        raise ProtocolError(
            f"only {len(valid)} survivors signed the survivor set this client signed, threshold is "
            f"{setup.threshold}: the server may be showing clients different sets; refusing to unmask"
        )
