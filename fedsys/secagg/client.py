"""SecAgg+ client state machine (Bell et al. CCS 2020, Alg. 2, over Bonawitz et al. CCS 2017, Fig. 4).

Threat model: without an identity, the server and other clients may be curious; the server is trusted
to follow the protocol for liveness but not for privacy of a single update, as far as the client can
check locally (semi-honest mode). With an identity key and a set of trusted peer identities the client
also defends against an actively malicious server (:mod:`fedsys.secagg.consistency`): it refuses
unsigned, untrusted or substituted peer keys before sharing anything or training, and reveals shares
only for a survivor set signed by t trusted survivors. Either way the client refuses to reveal both
Shamir shares (b and s) of one peer, never reveals its own s-key share, and reveals its own b-share only
when it is listed as a survivor. Keys are fresh per round.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

from fedsys.errors import AbortedRoundError, ConfigError, IntegrityError, ModelError, ProtocolError
from fedsys.secagg import consistency, shamir
from fedsys.secagg.encoding import check_encoding, encode_weighted, quantize
from fedsys.secagg.graph import check_threshold
from fedsys.secagg.identity import Identity
from fedsys.secagg.masking import apply_mask, pairwise_seed, pairwise_sign, reduce
from fedsys.secagg.messages import (
    AdvertiseKeysReply,
    ConsistencyReply,
    ConsistencyRequest,
    MaskedInputReply,
    MaskedInputRequest,
    PeerKeys,
    Record,
    SetupRequest,
    ShareKeysReply,
    ShareKeysRequest,
    Stage,
    UnmaskReply,
    UnmaskRequest,
    _bytes,
    _int,
    _int_list,
    _mapping,
)
from fedsys.secagg.prg import SEED_BYTES, ring_mask
from fedsys.secagg.primitives import (
    KeyPair,
    agree,
    generate_key_pair,
    load_private_key,
    open_envelope,
    private_key_bytes,
    seal_envelope,
)

_SHARE_BYTES = shamir.share_bytes_length()
_T = TypeVar("_T")


class SecAggClient:
    """One participant's side of one SecAgg+ round; call the four stage methods in order.

    An instance serves a single round (keys are fresh per round); create a new one for the next.

    Args:
        client_id: this participant's id (>= 1), as the server addresses it.
        identity: this holder's long-term signing key; given, the client runs in malicious-server mode.
        trusted_peers: DER public keys of the identities this holder trusts (required with ``identity``).

    Raises:
        ConfigError: a bad id, or an identity without trusted peers.
    """

    def __init__(
        self,
        client_id: int,
        *,
        identity: Identity | None = None,
        trusted_peers: frozenset[bytes] | None = None,
    ) -> None:
        if client_id < 1:
            raise ConfigError(f"secagg client id must be >= 1, got {client_id}")
        if identity is not None and not trusted_peers:
            raise ConfigError("a secagg identity key needs a non-empty set of trusted peer identities")
        self.client_id = client_id
        self.identity, self.trusted_peers = identity, trusted_peers or frozenset()
        self._signed_survivors: tuple[int, ...] = ()
        self._alive_peers: frozenset[int] = frozenset()
        self.num_clipped: int | None = None
        """Coordinates clipped when encoding this client's update (kept local, never sent)."""
        self._next: Stage | None = Stage.SETUP
        self._setup: SetupRequest | None = None
        self._encryption: KeyPair | None = None
        self._masking: KeyPair | None = None
        self._peer_keys: dict[int, PeerKeys] = {}
        self._self_seed = b""
        self._own_b_share = 0
        self._held: dict[int, tuple[int, int]] = {}
        self._failed: frozenset[int] = frozenset()

    def advertise_keys(self, request: SetupRequest) -> AdvertiseKeysReply:
        """Stages 0-1: validate the round parameters, generate key pairs (c, s), return public keys.

        Raises:
            ProtocolError: wrong stage, recipient or invalid parameters.
        """
        self._expect(Stage.SETUP, request.recipient)
        _check_setup(request, self.client_id)
        if self.identity is not None:
            consistency.check_malicious_setup(request)
        self._setup = request
        self._encryption, self._masking = generate_key_pair(), generate_key_pair()
        self._next = Stage.SHARE_KEYS
        encryption, masking = self._encryption.public, self._masking.public
        keys = (
            PeerKeys(encryption=encryption, masking=masking)
            if self.identity is None
            else consistency.sign_keys(self.identity, request, encryption=encryption, masking=masking)
        )
        return AdvertiseKeysReply(context=request.context, keys=keys)

    def share_keys(self, request: ShareKeysRequest) -> ShareKeysReply:
        """Stage 2: Shamir-share b_u and the s secret key among neighbours + self; seal one envelope each.

        Raises:
            ProtocolError: wrong stage/context, unknown peers or duplicate keys.
            AbortedRoundError: fewer than t holders remain.
        """
        self._expect(Stage.SHARE_KEYS, request.recipient, request.context)
        setup, encryption = self._setup_state()
        self._check_peer_keys(request, setup)
        if self.identity is not None:
            consistency.check_peer_keys(
                request.peer_keys, setup, own=self.identity, trusted=self.trusted_peers
            )
        holders = sorted(request.peer_keys) + [self.client_id]
        self._self_seed = os.urandom(SEED_BYTES)
        b_shares = shamir.share_secret(self._self_seed, threshold=setup.threshold, share_ids=holders)
        s_secret = private_key_bytes(self._require(self._masking).private)
        s_shares = shamir.share_secret(s_secret, threshold=setup.threshold, share_ids=holders)
        self._own_b_share = b_shares[self.client_id]
        self._peer_keys = dict(request.peer_keys)
        envelopes = {}
        for peer, keys in request.peer_keys.items():
            key = agree(encryption.private, keys.encryption, context=setup.context, purpose="envelope")
            aad = setup.context.associated_data(stage=Stage.SHARE_KEYS, sender=self.client_id, recipient=peer)
            plaintext = shamir.encode_share(b_shares[peer]) + shamir.encode_share(s_shares[peer])
            envelopes[peer] = seal_envelope(key, plaintext, associated_data=aad)
        self._next = Stage.MASKED_INPUT
        return ShareKeysReply(context=setup.context, envelopes=envelopes)

    @property
    def setup(self) -> SetupRequest | None:
        """This round's setup as the client accepted it (None before setup or after the round)."""
        return self._setup

    def mask_input(
        self,
        request: MaskedInputRequest,
        *,
        update: NDArray[np.floating],
        weight: float,
        rng: np.random.Generator,
        extra: NDArray[np.uint64] | None = None,
    ) -> MaskedInputReply:
        """Stage 3: open received shares, then send y_u = q(x_u) + PRG(b_u) + sum_v gamma_uv PRG(s_uv).

        Args:
            request: envelopes from neighbours that completed stage 2 (they define the mask set).
            update: the real-valued model update, of the agreed vector length.
            weight: the client's weight (example count), in (0, max_weight].
            rng: generator for stochastic rounding (not secret).
            extra: the round's ``extra_length`` integer coordinates, already in Z_2^k (federated
                evaluation sums), appended after the quantised update and masked with it.

        Raises:
            ProtocolError: wrong stage/context or senders that were not advertised peers.
            AbortedRoundError: fewer than t holders remain.
            ModelError, ConfigError: the update or weight do not fit the round parameters.
        """
        setup = self._require(self._setup)
        if setup.integer_input:
            raise ProtocolError(
                "this secagg round takes integer inputs (distributed DP), not a real-valued update"
            )
        if np.shape(update) != (setup.vector_length,):
            raise ModelError(
                f"secagg update must have shape ({setup.vector_length},), got {np.shape(update)}"
            )
        tail = np.zeros(0, dtype=np.uint64) if extra is None else extra
        tail = _ring_vector(tail, setup.extra_length, setup.ring_bits, what="extra coordinates")
        self.admit_masked_input(request, vector_length=int(np.size(update)))
        return self._mask(request, np.concatenate([self._encode(update, weight, setup, rng), tail]))

    def mask_integer_input(
        self, request: MaskedInputRequest, *, encoded: NDArray[np.uint64]
    ) -> MaskedInputReply:
        """Stage 3 in integer-input mode: mask a vector the caller already encoded in Z_2^k.

        Distributed DP encodes (rotates, rounds, adds its noise share) before masking; the
        vector must already be reduced mod 2^k and of the agreed length.

        Raises:
            ProtocolError: the round is not in integer-input mode, or as :meth:`mask_input`.
            ModelError: wrong shape, dtype or values outside Z_2^k.
        """
        setup = self._require(self._setup)
        if not setup.integer_input:
            raise ProtocolError("this secagg round takes real-valued updates, not integer inputs")
        vector = _ring_vector(encoded, setup.vector_length, setup.ring_bits, what="integer input")
        self.admit_masked_input(request, vector_length=int(vector.size))
        self.num_clipped = 0
        return self._mask(request, vector.copy())

    def _mask(self, request: MaskedInputRequest, masked: NDArray[np.uint64]) -> MaskedInputReply:
        setup, encryption = self._setup_state()
        senders = frozenset(request.envelopes)
        self._open_envelopes(request, setup, encryption)
        apply_mask(masked, self._self_seed, sign=1, ring_bits=setup.ring_bits)
        masking_key = self._require(self._masking).private
        for peer in sorted(senders):
            seed = pairwise_seed(masking_key, self._peer_keys[peer].masking, context=setup.context)
            apply_mask(masked, seed, sign=pairwise_sign(self.client_id, peer), ring_bits=setup.ring_bits)
        self._alive_peers = senders
        self._next = Stage.UNMASK if self.identity is None else Stage.CONSISTENCY_CHECK
        return MaskedInputReply(
            context=setup.context,
            masked_input=reduce(masked, ring_bits=setup.ring_bits),
            failed_peers=tuple(sorted(self._failed)),
        )

    def admit_masked_input(self, request: MaskedInputRequest, *, vector_length: int) -> float:
        """Every check of :meth:`mask_input` that does not need the update; changes no state.

        A data holder calls it before training, so that a request which cannot complete (wrong
        stage or context, senders that are not peers, too few share holders, a vector of the
        wrong length) costs it no privacy budget.

        Returns:
            The round's public ``max-weight``, agreed at setup: clamp the weight with it.

        Raises:
            ProtocolError: wrong stage/context, non-peer senders or a wrong vector length.
            AbortedRoundError: fewer than t holders remain.
        """
        self._expect(Stage.MASKED_INPUT, request.recipient, request.context)
        setup, _ = self._setup_state()
        senders = frozenset(request.envelopes)
        if not senders <= self._peer_keys.keys():
            raise ProtocolError(f"envelopes from non-peers {sorted(senders - self._peer_keys.keys())}")
        if len(senders) + 1 < setup.threshold:
            raise AbortedRoundError(
                f"only {len(senders) + 1} share holders left, threshold is {setup.threshold}"
            )
        if vector_length != setup.vector_length:
            raise ProtocolError(
                f"the round sums vectors of length {setup.vector_length}, not {vector_length}"
            )
        return setup.max_weight

    def sign_survivors(self, request: ConsistencyRequest) -> ConsistencyReply:
        """Malicious-server mode, ConsistencyCheck: sign the server's claimed U3, once per round.

        Raises:
            ProtocolError: wrong stage/context, or an implausible U3 (see
                :func:`fedsys.secagg.consistency.sign_survivors`).
        """
        self._expect(Stage.CONSISTENCY_CHECK, request.recipient, request.context)
        setup, _ = self._setup_state()
        identity = self._require(self.identity)
        signature = consistency.sign_survivors(
            identity, setup, request.survivors, alive_peers=self._alive_peers
        )
        self._signed_survivors = tuple(sorted(request.survivors))
        self._next = Stage.UNMASK
        return ConsistencyReply(context=setup.context, signature=signature)

    def unmask(self, request: UnmaskRequest) -> UnmaskReply:
        """Stage 4: reveal b-shares of survivors and s-shares of dropped peers, never both for one peer.

        Raises:
            ProtocolError: wrong stage/context, a peer listed as both survivor and dropped, this client
                listed as dropped, or peers it holds no (valid) shares for.
        """
        self._expect(Stage.UNMASK, request.recipient, request.context)
        setup, _ = self._setup_state()
        survivors, dropped = frozenset(request.survivors), frozenset(request.dropped)
        if self.identity is not None:
            self._check_signed_survivors(request, survivors, dropped)
        both = survivors & dropped
        if both:
            raise ProtocolError(f"server asked for both b- and s-shares of peers {sorted(both)}; refusing")
        if self.client_id in dropped:
            raise ProtocolError(f"client {self.client_id} is alive but was declared dropped; refusing")
        unknown = (survivors - {self.client_id}) | dropped
        unknown -= self._held.keys()
        if unknown:
            raise ProtocolError(f"client {self.client_id} holds no valid shares of peers {sorted(unknown)}")
        held = self._held
        b_shares = {peer: held[peer][0] for peer in survivors if peer != self.client_id}
        if self.client_id in survivors:
            b_shares[self.client_id] = self._own_b_share
        s_shares = {peer: held[peer][1] for peer in dropped}
        self._forget()
        return UnmaskReply(
            context=setup.context,
            b_shares={peer: shamir.encode_share(value) for peer, value in b_shares.items()},
            s_shares={peer: shamir.encode_share(value) for peer, value in s_shares.items()},
        )

    def _check_signed_survivors(
        self, request: UnmaskRequest, survivors: frozenset[int], dropped: frozenset[int]
    ) -> None:
        setup, signed = self._require(self._setup), frozenset(self._signed_survivors)
        consistency.check_survivor_signatures(
            request.signatures,
            setup,
            self._signed_survivors,
            own=self._require(self.identity),
            peer_keys=self._peer_keys,
        )
        if not survivors <= signed or dropped & signed:
            raise ProtocolError(
                f"unmask request (survivors {sorted(survivors)}, dropped {sorted(dropped)}) contradicts "
                f"the signed survivor set {sorted(signed)}; refusing"
            )

    def to_record(self) -> Record:
        """The client's mid-round state as a flat record, for a transport that restarts the
        client between stages (a Flower SuperNode keeps it in the node's ``Context.state``).

        The record holds this round's private keys, self-mask seed and received shares: it is
        as secret as the client itself and must stay on the data holder's node.
        """
        setup = self._setup
        record: Record = {
            "client-id": self.client_id,
            "next-stage": -1 if self._next is None else int(self._next),
        }
        if setup is None or self._encryption is None or self._masking is None:
            return record
        peers = sorted(self._peer_keys)
        held = sorted(self._held)
        return (
            record
            | {f"setup-{k}": v for k, v in setup.to_record().items()}
            | {
                "encryption-private": private_key_bytes(self._encryption.private),
                "masking-private": private_key_bytes(self._masking.private),
                "peers": peers,
                "peer-encryption": [self._peer_keys[p].encryption for p in peers],
                "peer-masking": [self._peer_keys[p].masking for p in peers],
                "peer-identity": [self._peer_keys[p].identity for p in peers],
                "alive-peers": sorted(self._alive_peers),
                "signed-survivors": list(self._signed_survivors),
                "self-seed": self._self_seed,
                "own-b-share": shamir.encode_share(self._own_b_share) if self._self_seed else b"",
                "held": held,
                "held-b": [shamir.encode_share(self._held[p][0]) for p in held],
                "held-s": [shamir.encode_share(self._held[p][1]) for p in held],
                "failed": sorted(self._failed),
            }
        )

    @classmethod
    def from_record(
        cls,
        record: Mapping[str, object],
        *,
        identity: Identity | None = None,
        trusted_peers: frozenset[bytes] | None = None,
    ) -> SecAggClient:
        """Rebuild a client saved with :meth:`to_record`; the long-term identity is never in the record,
        pass it (and the trusted peers) again.

        Raises:
            ProtocolError: the record is incomplete or malformed.
        """
        client = cls(_int(record, "client-id"), identity=identity, trusted_peers=trusted_peers)
        stage = _int(record, "next-stage")
        client._next = None if stage < 0 else Stage(stage)
        if "setup-stage" not in record:
            return client
        client._setup = SetupRequest.from_record(
            {k.removeprefix("setup-"): v for k, v in record.items() if k.startswith("setup-")}
        )
        client._encryption = _key_pair(_bytes(record, "encryption-private"))
        client._masking = _key_pair(_bytes(record, "masking-private"))
        encryption = _mapping(record, "peers", "peer-encryption")
        masking = _mapping(record, "peers", "peer-masking")
        identities = _mapping(record, "peers", "peer-identity") if "peer-identity" in record else {}
        client._peer_keys = {
            p: PeerKeys(encryption=encryption[p], masking=masking[p], identity=identities.get(p, b""))
            for p in encryption
        }
        if "alive-peers" in record:
            client._alive_peers = frozenset(_int_list(record, "alive-peers"))
            client._signed_survivors = tuple(_int_list(record, "signed-survivors"))
        client._self_seed = _bytes(record, "self-seed")
        own = _bytes(record, "own-b-share")
        client._own_b_share = shamir.decode_share(own) if own else 0
        held_b, held_s = _mapping(record, "held", "held-b"), _mapping(record, "held", "held-s")
        client._held = {p: (shamir.decode_share(held_b[p]), shamir.decode_share(held_s[p])) for p in held_b}
        client._failed = frozenset(_int_list(record, "failed"))
        return client

    def _expect(self, stage: Stage, recipient: int, context: object = None) -> None:
        if self._next is None:
            raise ProtocolError(
                f"client {self.client_id} finished its round; use a new SecAggClient per round"
            )
        if self._next != stage:
            raise ProtocolError(
                f"client {self.client_id} expected stage {int(self._next)}, got stage {int(stage)}"
            )
        if recipient != self.client_id:
            raise ProtocolError(f"message for client {recipient} delivered to client {self.client_id}")
        if self._setup is not None and context != self._setup.context:
            raise ProtocolError(f"message for {context} received in {self._setup.context}")

    def _setup_state(self) -> tuple[SetupRequest, KeyPair]:
        return self._require(self._setup), self._require(self._encryption)

    @staticmethod
    def _require(value: _T | None) -> _T:
        if value is None:
            raise ProtocolError("secagg client used before setup or after the round ended")
        return value

    def _check_peer_keys(self, request: ShareKeysRequest, setup: SetupRequest) -> None:
        peers = frozenset(request.peer_keys)
        if not peers <= frozenset(setup.neighbours):
            raise ProtocolError(f"keys of non-neighbours {sorted(peers - frozenset(setup.neighbours))}")
        own = (self._require(self._encryption).public, self._require(self._masking).public)
        keys = [*own] + [k for p in request.peer_keys.values() for k in (p.encryption, p.masking)]
        if len(set(keys)) != len(keys):
            raise ProtocolError("advertised public keys are not all distinct")
        if len(peers) + 1 < setup.threshold:
            raise AbortedRoundError(f"only {len(peers) + 1} share holders, threshold is {setup.threshold}")

    def _open_envelopes(self, request: MaskedInputRequest, setup: SetupRequest, encryption: KeyPair) -> None:
        failed = set()
        for sender, envelope in request.envelopes.items():
            key = agree(
                encryption.private,
                self._peer_keys[sender].encryption,
                context=setup.context,
                purpose="envelope",
            )
            aad = setup.context.associated_data(
                stage=Stage.SHARE_KEYS, sender=sender, recipient=self.client_id
            )
            try:
                plaintext = open_envelope(key, envelope, associated_data=aad)
                if len(plaintext) != 2 * _SHARE_BYTES:
                    raise IntegrityError(f"envelope from {sender} holds {len(plaintext)} bytes")
                shares = (
                    shamir.decode_share(plaintext[:_SHARE_BYTES]),
                    shamir.decode_share(plaintext[_SHARE_BYTES:]),
                )
            except ProtocolError:
                failed.add(sender)  # excluded here, reported to the server in the reply
                continue
            self._held[sender] = shares
        self._failed = frozenset(failed)

    def _encode(
        self, update: NDArray[np.floating], weight: float, setup: SetupRequest, rng: np.random.Generator
    ) -> NDArray[np.uint64]:
        if np.shape(update) != (setup.vector_length,):
            raise ModelError(
                f"secagg update must have shape ({setup.vector_length},), got {np.shape(update)}"
            )
        encoded, self.num_clipped = encode_weighted(
            update, weight=weight, max_weight=setup.max_weight, clip_range=setup.clip_range
        )
        quantized = quantize(encoded, clip_range=setup.clip_range, quant_bits=setup.quant_bits, rng=rng)
        return quantized.values

    def _forget(self) -> None:
        self._next = None
        self._setup = self._encryption = self._masking = None
        self._self_seed, self._own_b_share = b"", 0
        self._held, self._peer_keys = {}, {}


def _key_pair(raw: bytes) -> KeyPair:
    private = load_private_key(raw)
    return KeyPair(private=private, public=private.public_key().public_bytes_raw())


def _ring_vector(values: NDArray[np.uint64], length: int, ring_bits: int, *, what: str) -> NDArray[np.uint64]:
    """``values`` as a uint64 vector of ``length`` elements of Z_2^ring_bits.

    Raises:
        ModelError: another dtype or shape, or a value outside the ring.
    """
    vector = np.asarray(values)
    if vector.dtype != np.uint64 or vector.shape != (length,):
        shape = f"({length},), got {vector.dtype} {vector.shape}"
        raise ModelError(f"secagg {what} must be uint64 of shape {shape}")
    if ring_bits < 64 and vector.size and int(vector.max()) >> ring_bits:
        raise ModelError(f"secagg {what} has values outside Z_2^{ring_bits}")
    return vector


def _check_setup(request: SetupRequest, client_id: int) -> None:
    neighbours = request.neighbours
    if client_id in neighbours or len(set(neighbours)) != len(neighbours) or min(neighbours, default=1) < 1:
        raise ProtocolError(f"invalid neighbour list {sorted(neighbours)} for client {client_id}")
    try:
        check_encoding(clip_range=request.clip_range, quant_bits=request.quant_bits)
        check_threshold(request.threshold, num_holders=len(neighbours) + 1)
        ring_mask(request.ring_bits)
    except ConfigError as err:
        raise ProtocolError(f"invalid secagg setup: {err}") from err
    if request.extra_length < 0 or (request.integer_input and request.extra_length):
        raise ProtocolError(f"invalid secagg setup: {request.extra_length} extra coordinates")
    if (not request.integer_input and request.ring_bits <= request.quant_bits) or request.vector_length < 1:
        raise ProtocolError(
            f"invalid secagg setup: ring bits {request.ring_bits}, length {request.vector_length}"
        )
    if not (math.isfinite(request.max_weight) and request.max_weight > 0):
        raise ProtocolError(
            f"invalid secagg setup: max-weight must be finite and > 0, got {request.max_weight}"
        )
