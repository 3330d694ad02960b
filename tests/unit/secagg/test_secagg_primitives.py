"""Tests for X25519 agreement, HKDF derivation and AES-GCM envelopes."""

from __future__ import annotations

import os

import pytest
from cryptography.exceptions import InvalidTag
from hypothesis import given
from hypothesis import strategies as st

from fedsys.errors import IntegrityError, ProtocolError
from fedsys.secagg.primitives import (
    RoundContext,
    agree,
    generate_key_pair,
    load_private_key,
    open_envelope,
    private_key_bytes,
    public_key_of,
    seal_envelope,
)

CONTEXT = RoundContext(run_id=7, round=3)
AAD = CONTEXT.associated_data(stage=2, sender=1, recipient=2)


@given(payload=st.binary(max_size=512))
def test_seal_then_open_returns_payload(payload: bytes) -> None:
    key = os.urandom(32)

    envelope = seal_envelope(key, payload, associated_data=AAD)

    assert open_envelope(key, envelope, associated_data=AAD) == payload


@given(payload=st.binary(max_size=256), data=st.data())
def test_any_flipped_bit_raises_integrity_error(payload: bytes, data: st.DataObject) -> None:
    key = os.urandom(32)
    envelope = bytearray(seal_envelope(key, payload, associated_data=AAD))
    bit = data.draw(st.integers(0, 8 * len(envelope) - 1))
    envelope[bit // 8] ^= 1 << (bit % 8)

    with pytest.raises(IntegrityError):
        open_envelope(key, bytes(envelope), associated_data=AAD)


@pytest.mark.parametrize(
    "other",
    [
        RoundContext(run_id=7, round=4).associated_data(stage=2, sender=1, recipient=2),
        RoundContext(run_id=8, round=3).associated_data(stage=2, sender=1, recipient=2),
        CONTEXT.associated_data(stage=3, sender=1, recipient=2),
        CONTEXT.associated_data(stage=2, sender=3, recipient=2),
        CONTEXT.associated_data(stage=2, sender=1, recipient=3),
        CONTEXT.associated_data(stage=2, sender=2, recipient=1),
    ],
    ids=["other-round", "other-run", "other-stage", "other-sender", "other-recipient", "reversed"],
)
def test_envelope_opened_in_another_context_raises(other: bytes) -> None:
    key = os.urandom(32)
    envelope = seal_envelope(key, b"share", associated_data=AAD)

    with pytest.raises(IntegrityError) as excinfo:
        open_envelope(key, envelope, associated_data=other)

    assert isinstance(excinfo.value.__cause__, InvalidTag)


def test_truncated_envelope_raises() -> None:
    key = os.urandom(32)
    envelope = seal_envelope(key, b"", associated_data=AAD)

    with pytest.raises(IntegrityError):
        open_envelope(key, envelope[:-1], associated_data=AAD)


def test_agreement_is_symmetric_and_separated_by_purpose_and_round() -> None:
    alice, bob = generate_key_pair(), generate_key_pair()

    key = agree(alice.private, bob.public, context=CONTEXT, purpose="envelope")

    assert key == agree(bob.private, alice.public, context=CONTEXT, purpose="envelope")
    assert len(key) == 32
    assert key != agree(alice.private, bob.public, context=CONTEXT, purpose="mask")
    assert key != agree(
        alice.private, bob.public, context=RoundContext(run_id=7, round=4), purpose="envelope"
    )


@pytest.mark.parametrize("public", [bytes(32), b"\x01" * 31], ids=["small-order", "short"])
def test_invalid_peer_public_key_raises(public: bytes) -> None:
    with pytest.raises(ProtocolError):
        agree(generate_key_pair().private, public, context=CONTEXT, purpose="mask")


def test_private_key_survives_raw_serialisation() -> None:
    pair = generate_key_pair()

    restored = load_private_key(private_key_bytes(pair.private))

    assert public_key_of(restored) == pair.public


def test_context_rejects_out_of_range_fields() -> None:
    with pytest.raises(ProtocolError, match="-1"):
        RoundContext(run_id=-1, round=0)
    with pytest.raises(ProtocolError):
        CONTEXT.associated_data(stage=2, sender=2**64, recipient=1)
