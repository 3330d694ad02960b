"""X25519 key agreement, HKDF-SHA256 key derivation and AES-GCM envelopes for secure aggregation.

Assumptions (Bonawitz et al. CCS 2017, Sec. 3 and 4): keys are fresh per round, so a key agreement
output is never reused across rounds; nonces are 96-bit random values from ``os.urandom``, safe for the
handful of envelopes sealed under one key. Every envelope's associated data binds the run, round,
stage, sender and recipient, so a ciphertext moved to another context fails authentication.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedsys.errors import IntegrityError, ProtocolError

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
_DOMAIN = b"fedsys-secagg-v1"
_MAX_U64 = 2**64 - 1

KeyPurpose = Literal["envelope", "mask"]


@dataclass(frozen=True)
class RoundContext:
    """The (run, round) pair every derived key and every envelope is bound to.

    Args:
        run_id: Flower run id, in [0, 2^64).
        round: server round number, in [0, 2^64).
    """

    run_id: int
    round: int

    def __post_init__(self) -> None:
        for name, value in (("run_id", self.run_id), ("round", self.round)):
            if not 0 <= value <= _MAX_U64:
                raise ProtocolError(f"secagg {name} must be in [0, 2^64), got {value}")

    def associated_data(self, *, stage: int, sender: int, recipient: int) -> bytes:
        """Encode the AEAD associated data binding an envelope to its context.

        Raises:
            ProtocolError: a field does not fit its fixed-width encoding.
        """
        try:
            fields = struct.pack(">QQBQQ", self.run_id, self.round, stage, sender, recipient)
        except struct.error as err:
            raise ProtocolError(f"cannot encode envelope context {stage=}, {sender=}, {recipient=}") from err
        return _DOMAIN + b"/aad" + fields

    def key_info(self, purpose: KeyPurpose) -> bytes:
        """HKDF ``info`` separating key uses (envelopes vs. masks) and rounds."""
        return _DOMAIN + b"/" + purpose.encode() + struct.pack(">QQ", self.run_id, self.round)


@dataclass(frozen=True)
class KeyPair:
    """An X25519 key pair; ``public`` is the 32-byte raw public key."""

    private: x25519.X25519PrivateKey
    public: bytes


def generate_key_pair() -> KeyPair:
    """Generate a fresh X25519 key pair from the operating system's CSPRNG."""
    private = x25519.X25519PrivateKey.generate()
    return KeyPair(private=private, public=private.public_key().public_bytes_raw())


def private_key_bytes(private: x25519.X25519PrivateKey) -> bytes:
    """Serialise a private key to its 32 raw bytes (the secret that is Shamir-shared)."""
    return private.private_bytes_raw()


def load_private_key(raw: bytes) -> x25519.X25519PrivateKey:
    """Deserialise 32 raw bytes into a private key.

    Raises:
        ProtocolError: ``raw`` is not 32 bytes.
    """
    if len(raw) != KEY_BYTES:
        raise ProtocolError(f"an X25519 private key is {KEY_BYTES} bytes, got {len(raw)}")
    return x25519.X25519PrivateKey.from_private_bytes(raw)


def public_key_of(private: x25519.X25519PrivateKey) -> bytes:
    """The raw public key belonging to ``private``."""
    return private.public_key().public_bytes_raw()


def check_public_key(public: bytes) -> bool:
    """Whether ``public`` is a 32-byte X25519 key that agreement accepts (not of small order), tried
    against a throwaway key so a peer's bad key is caught before anyone else has to use it."""
    if len(public) != KEY_BYTES:
        return False
    try:
        x25519.X25519PrivateKey.generate().exchange(x25519.X25519PublicKey.from_public_bytes(public))
    except ValueError:
        return False
    return True


def agree(
    private: x25519.X25519PrivateKey, peer_public: bytes, *, context: RoundContext, purpose: KeyPurpose
) -> bytes:
    """Derive a 32-byte symmetric key: HKDF-SHA256(X25519(private, peer_public)).

    Both parties obtain the same key (Bonawitz et al. 2017, Sec. 3.1 KA.agree); ``purpose`` and the
    round context go into HKDF's ``info`` so envelope keys and mask seeds are independent.

    Raises:
        ProtocolError: the peer key is malformed or of small order (all-zero shared secret).
    """
    if len(peer_public) != KEY_BYTES:
        raise ProtocolError(f"an X25519 public key is {KEY_BYTES} bytes, got {len(peer_public)}")
    try:
        shared = private.exchange(x25519.X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as err:
        raise ProtocolError("X25519 agreement failed: the peer public key is invalid") from err
    hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=context.key_info(purpose))
    return hkdf.derive(shared)


def seal_envelope(key: bytes, plaintext: bytes, *, associated_data: bytes) -> bytes:
    """Encrypt and authenticate ``plaintext`` with AES-256-GCM; returns ``nonce || ciphertext || tag``."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated_data)


def open_envelope(key: bytes, envelope: bytes, *, associated_data: bytes) -> bytes:
    """Verify and decrypt an envelope made by :func:`seal_envelope`.

    Raises:
        IntegrityError: the envelope was tampered with, truncated, or sealed for another context.
    """
    if len(envelope) < NONCE_BYTES + TAG_BYTES:
        raise IntegrityError(f"envelope too short: {len(envelope)} bytes")
    nonce, body = envelope[:NONCE_BYTES], envelope[NONCE_BYTES:]
    try:
        return AESGCM(key).decrypt(nonce, body, associated_data)
    except InvalidTag as err:
        raise IntegrityError("envelope authentication failed (tampered, replayed or misdirected)") from err


def envelope_length(plaintext_length: int) -> int:
    """Length of the envelope sealing ``plaintext_length`` bytes."""
    return NONCE_BYTES + plaintext_length + TAG_BYTES
