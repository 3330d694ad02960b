"""Messages exchanged by SecAgg+ clients and server, and their flat record form for a transport.

Every message carries its stage and the (run, round) context, so a message replayed into another stage
or round is rejected. ``to_record()`` yields a ``dict[str, int | float | bytes | list[int] | list[bytes]
| numpy.ndarray]`` with kebab-case keys: the scalars and lists fit a Flower ``ConfigRecord``, the single
array (``masked-input``) an ``ArrayRecord``. Mappings travel as two parallel lists (ids, values).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np
from numpy.typing import NDArray

from fedsys.errors import ProtocolError
from fedsys.secagg.primitives import RoundContext

RecordValue = int | float | bytes | list[int] | list[bytes] | NDArray[np.uint64]
Record = dict[str, RecordValue]


class Stage(IntEnum):
    """Protocol stages (Bonawitz et al. 2017, Fig. 4 rounds 0-4; Bell et al. 2020, Sec. 3)."""

    SETUP = 0
    ADVERTISE_KEYS = 1
    SHARE_KEYS = 2
    MASKED_INPUT = 3
    UNMASK = 4
    CONSISTENCY_CHECK = 5
    """Malicious-server mode only; runs between MASKED_INPUT and UNMASK (Bonawitz et al. Fig. 4 round 3).
    Numbered last so the semi-honest stages keep their wire numbers."""


@dataclass(frozen=True)
class PeerKeys:
    """A peer's advertised public keys: c (envelope encryption) and s (pairwise masking).

    Against a malicious server also the peer's long-term ``identity`` (DER public key) and its
    ``signature`` over both keys, the round and the cohort (:func:`fedsys.secagg.identity.keys_payload`);
    both are empty in semi-honest mode.
    """

    encryption: bytes
    masking: bytes
    identity: bytes = b""
    signature: bytes = b""


@dataclass(frozen=True)
class SetupRequest:
    """Stage 0, server -> client: round parameters and the client's neighbours."""

    context: RoundContext
    recipient: int
    neighbours: tuple[int, ...]
    threshold: int
    ring_bits: int
    quant_bits: int
    clip_range: float
    vector_length: int
    max_weight: float
    integer_input: bool = False  # clients send vectors already in Z_2^k (distributed DP)
    integer_scale: float = 0.0  # distributed DP: the scale gamma the server chose (0 otherwise)
    extra_length: int = 0  # integer coordinates after the quantised update (federated evaluation sums)

    def to_record(self) -> Record:
        """Flatten for the transport."""
        return _header(Stage.SETUP, self.context) | {
            "integer-input": self.integer_input,
            "integer-scale": self.integer_scale,
            "extra-length": self.extra_length,
            "recipient": self.recipient,
            "neighbours": list(self.neighbours),
            "threshold": self.threshold,
            "ring-bits": self.ring_bits,
            "quant-bits": self.quant_bits,
            "clip-range": self.clip_range,
            "vector-length": self.vector_length,
            "max-weight": self.max_weight,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, object]) -> SetupRequest:
        """Parse; raises ProtocolError on a wrong stage, missing key or wrong type."""
        return cls(
            context=_read_header(record, Stage.SETUP),
            recipient=_int(record, "recipient"),
            neighbours=tuple(_int_list(record, "neighbours")),
            threshold=_int(record, "threshold"),
            ring_bits=_int(record, "ring-bits"),
            quant_bits=_int(record, "quant-bits"),
            clip_range=_float(record, "clip-range"),
            vector_length=_int(record, "vector-length"),
            max_weight=_float(record, "max-weight"),
            integer_input=_flag(record, "integer-input"),
            integer_scale=_float(record, "integer-scale") if "integer-scale" in record else 0.0,
            extra_length=_int(record, "extra-length") if "extra-length" in record else 0,
        )


@dataclass(frozen=True)
class AdvertiseKeysReply:
    """Stage 1, client -> server: the client's two fresh public keys."""

    context: RoundContext
    keys: PeerKeys

    def to_record(self) -> Record:
        """Flatten for the transport."""
        keys: Record = {"encryption-key": self.keys.encryption, "masking-key": self.keys.masking}
        if self.keys.identity:
            keys |= {"identity-key": self.keys.identity, "key-signature": self.keys.signature}
        return _header(Stage.ADVERTISE_KEYS, self.context) | keys

    @classmethod
    def from_record(cls, record: Mapping[str, object]) -> AdvertiseKeysReply:
        """Parse; raises ProtocolError on a wrong stage, missing key or wrong type."""
        signed = "identity-key" in record or "key-signature" in record
        keys = PeerKeys(
            encryption=_bytes(record, "encryption-key"),
            masking=_bytes(record, "masking-key"),
            identity=_bytes(record, "identity-key") if signed else b"",
            signature=_bytes(record, "key-signature") if signed else b"",
        )
        if signed and not (keys.identity and keys.signature):
            raise ProtocolError("an advertised identity key and its signature must both be non-empty")
        return cls(context=_read_header(record, Stage.ADVERTISE_KEYS), keys=keys)


@dataclass(frozen=True)
class ShareKeysRequest:
    """Stage 2, server -> client: public keys of the neighbours that advertised keys."""

    context: RoundContext
    recipient: int
    peer_keys: Mapping[int, PeerKeys]

    def to_record(self) -> Record:
        """Flatten for the transport."""
        peers = sorted(self.peer_keys)
        record = _header(Stage.SHARE_KEYS, self.context) | {
            "recipient": self.recipient,
            "peers": peers,
            "encryption-keys": [self.peer_keys[p].encryption for p in peers],
            "masking-keys": [self.peer_keys[p].masking for p in peers],
        }
        if any(keys.identity for keys in self.peer_keys.values()):
            record["identity-keys"] = [self.peer_keys[p].identity for p in peers]
            record["key-signatures"] = [self.peer_keys[p].signature for p in peers]
        return record

    @classmethod
    def from_record(cls, record: Mapping[str, object]) -> ShareKeysRequest:
        """Parse; raises ProtocolError on a wrong stage, missing key or wrong type."""
        encryption = _mapping(record, "peers", "encryption-keys")
        masking = _mapping(record, "peers", "masking-keys")
        signed = "identity-keys" in record
        identity = _mapping(record, "peers", "identity-keys") if signed else {}
        signature = _mapping(record, "peers", "key-signatures") if signed else {}
        keys = {
            peer: PeerKeys(encryption[peer], masking[peer], identity.get(peer, b""), signature.get(peer, b""))
            for peer in encryption
        }
        return cls(
            context=_read_header(record, Stage.SHARE_KEYS),
            recipient=_int(record, "recipient"),
            peer_keys=keys,
        )


@dataclass(frozen=True)
class ShareKeysReply:
    """Stage 2, client -> server: one envelope of encrypted Shamir shares per neighbour."""

    context: RoundContext
    envelopes: Mapping[int, bytes]

    def to_record(self) -> Record:
        """Flatten for the transport."""
        return _header(Stage.SHARE_KEYS, self.context) | _flatten(self.envelopes, "recipients", "envelopes")

    @classmethod
    def from_record(cls, record: Mapping[str, object]) -> ShareKeysReply:
        """Parse; raises ProtocolError on a wrong stage, missing key or wrong type."""
        envelopes = _mapping(record, "recipients", "envelopes")
        return cls(context=_read_header(record, Stage.SHARE_KEYS), envelopes=envelopes)


@dataclass(frozen=True)
class MaskedInputRequest:
    """Stage 3, server -> client: the envelopes addressed to the client, by sender."""

    context: RoundContext
    recipient: int
    envelopes: Mapping[int, bytes]

    def to_record(self) -> Record:
        """Flatten for the transport."""
        header = _header(Stage.MASKED_INPUT, self.context) | {"recipient": self.recipient}
        return header | _flatten(self.envelopes, "senders", "envelopes")

    @classmethod
    def from_record(cls, record: Mapping[str, object]) -> MaskedInputRequest:
        """Parse; raises ProtocolError on a wrong stage, missing key or wrong type."""
        return cls(
            context=_read_header(record, Stage.MASKED_INPUT),
            recipient=_int(record, "recipient"),
            envelopes=_mapping(record, "senders", "envelopes"),
        )


@dataclass(frozen=True, eq=False)  # holds an ndarray, whose == is element-wise
class MaskedInputReply:
    """Stage 3, client -> server: the masked input and the senders whose envelopes failed to open."""

    context: RoundContext
    masked_input: NDArray[np.uint64]
    failed_peers: tuple[int, ...]

    def to_record(self) -> Record:
        """Flatten for the transport."""
        return _header(Stage.MASKED_INPUT, self.context) | {
            "masked-input": self.masked_input,
            "failed-peers": list(self.failed_peers),
        }

    @classmethod
    def from_record(cls, record: Mapping[str, object]) -> MaskedInputReply:
        """Parse; raises ProtocolError on a wrong stage, missing key or wrong type."""
        array = record.get("masked-input")
        if not isinstance(array, np.ndarray) or array.dtype != np.uint64 or array.ndim != 1:
            raise ProtocolError("record field 'masked-input' must be a 1-d uint64 array")
        return cls(
            context=_read_header(record, Stage.MASKED_INPUT),
            masked_input=array,
            failed_peers=tuple(_int_list(record, "failed-peers")),
        )


@dataclass(frozen=True)
class ConsistencyRequest:
    """Malicious-server stage, server -> client: the survivor set U3 the server claims (to be signed)."""

    context: RoundContext
    recipient: int
    survivors: tuple[int, ...]

    def to_record(self) -> Record:
        """Flatten for the transport."""
        header = _header(Stage.CONSISTENCY_CHECK, self.context)
        return header | {"recipient": self.recipient, "survivors": list(self.survivors)}

    @classmethod
    def from_record(cls, record: Mapping[str, object]) -> ConsistencyRequest:
        """Parse; raises ProtocolError on a wrong stage, missing key or wrong type."""
        return cls(
            context=_read_header(record, Stage.CONSISTENCY_CHECK),
            recipient=_int(record, "recipient"),
            survivors=tuple(_int_list(record, "survivors")),
        )


@dataclass(frozen=True)
class ConsistencyReply:
    """Malicious-server stage, client -> server: the client's signature over U3 and the cohort."""

    context: RoundContext
    signature: bytes

    def to_record(self) -> Record:
        """Flatten for the transport."""
        return _header(Stage.CONSISTENCY_CHECK, self.context) | {"survivors-signature": self.signature}

    @classmethod
    def from_record(cls, record: Mapping[str, object]) -> ConsistencyReply:
        """Parse; raises ProtocolError on a wrong stage, missing key or wrong type."""
        return cls(
            context=_read_header(record, Stage.CONSISTENCY_CHECK),
            signature=_bytes(record, "survivors-signature"),
        )


@dataclass(frozen=True)
class UnmaskRequest:
    """Stage 4, server -> client: which neighbours survived (send b-shares) and dropped (s-shares).

    Against a malicious server it also carries the survivors' signatures on U3 (by signer id),
    which each client checks before revealing anything; empty in semi-honest mode.
    """

    context: RoundContext
    recipient: int
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]
    signatures: Mapping[int, bytes] = field(default_factory=dict)

    def to_record(self) -> Record:
        """Flatten for the transport."""
        record = _header(Stage.UNMASK, self.context) | {
            "recipient": self.recipient,
            "survivors": list(self.survivors),
            "dropped": list(self.dropped),
        }
        if self.signatures:
            record |= _flatten(self.signatures, "signers", "survivors-signatures")
        return record

    @classmethod
    def from_record(cls, record: Mapping[str, object]) -> UnmaskRequest:
        """Parse; raises ProtocolError on a wrong stage, missing key or wrong type."""
        signed = "signers" in record
        return cls(
            context=_read_header(record, Stage.UNMASK),
            recipient=_int(record, "recipient"),
            survivors=tuple(_int_list(record, "survivors")),
            dropped=tuple(_int_list(record, "dropped")),
            signatures=_mapping(record, "signers", "survivors-signatures") if signed else {},
        )


@dataclass(frozen=True)
class UnmaskReply:
    """Stage 4, client -> server: encoded Shamir shares of b_u (survivors) and s_u (dropped), by owner."""

    context: RoundContext
    b_shares: Mapping[int, bytes]
    s_shares: Mapping[int, bytes]

    def to_record(self) -> Record:
        """Flatten for the transport."""
        b_part = _flatten(self.b_shares, "b-share-owners", "b-shares")
        return (
            _header(Stage.UNMASK, self.context)
            | b_part
            | _flatten(self.s_shares, "s-share-owners", "s-shares")
        )

    @classmethod
    def from_record(cls, record: Mapping[str, object]) -> UnmaskReply:
        """Parse; raises ProtocolError on a wrong stage, missing key or wrong type."""
        return cls(
            context=_read_header(record, Stage.UNMASK),
            b_shares=_mapping(record, "b-share-owners", "b-shares"),
            s_shares=_mapping(record, "s-share-owners", "s-shares"),
        )


def _header(stage: Stage, context: RoundContext) -> Record:
    return {"stage": int(stage), "run-id": context.run_id, "round": context.round}


def _read_header(record: Mapping[str, object], stage: Stage) -> RoundContext:
    found = _int(record, "stage")
    if found != stage:
        raise ProtocolError(f"expected a stage-{int(stage)} ({stage.name}) message, got stage {found}")
    return RoundContext(run_id=_int(record, "run-id"), round=_int(record, "round"))


def _flatten(mapping: Mapping[int, bytes], ids_key: str, values_key: str) -> Record:
    ids = sorted(mapping)
    return {ids_key: ids, values_key: [mapping[i] for i in ids]}


def _mapping(record: Mapping[str, object], ids_key: str, values_key: str) -> dict[int, bytes]:
    ids, values = _int_list(record, ids_key), _bytes_list(record, values_key)
    if len(ids) != len(values) or len(set(ids)) != len(ids):
        raise ProtocolError(f"record fields {ids_key!r}/{values_key!r} must be equally long, ids distinct")
    return dict(zip(ids, values, strict=True))


def _int(record: Mapping[str, object], key: str) -> int:
    value = record.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ProtocolError(f"record field {key!r} must be an int, got {type(value).__name__}")
    return value


def _flag(record: Mapping[str, object], key: str) -> bool:
    value = record.get(key, False)
    if not isinstance(value, bool):
        raise ProtocolError(f"secagg message field {key!r} must be a bool, got {type(value).__name__}")
    return value


def _float(record: Mapping[str, object], key: str) -> float:
    value = record.get(key)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ProtocolError(f"record field {key!r} must be a number, got {type(value).__name__}")
    try:
        return float(value)
    except OverflowError as err:  # an int beyond a double's range
        raise ProtocolError(f"record field {key!r} is out of range") from err


def _bytes(record: Mapping[str, object], key: str) -> bytes:
    value = record.get(key)
    if not isinstance(value, bytes):
        raise ProtocolError(f"record field {key!r} must be bytes, got {type(value).__name__}")
    return value


def _int_list(record: Mapping[str, object], key: str) -> list[int]:
    value = record.get(key)
    if not isinstance(value, Sequence) or isinstance(value, (bytes, str)):
        raise ProtocolError(f"record field {key!r} must be a list of ints, got {type(value).__name__}")
    if not all(isinstance(item, int) and not isinstance(item, bool) for item in value):
        raise ProtocolError(f"record field {key!r} must be a list of ints")
    return list(value)


def _bytes_list(record: Mapping[str, object], key: str) -> list[bytes]:
    value = record.get(key)
    if not isinstance(value, Sequence) or isinstance(value, (bytes, str)):
        raise ProtocolError(f"record field {key!r} must be a list of bytes, got {type(value).__name__}")
    if not all(isinstance(item, bytes) for item in value):
        raise ProtocolError(f"record field {key!r} must be a list of bytes")
    return list(value)
