"""Decoding what another party sent: arrays and metrics are checked before anything is allocated or used."""

import io

import numpy as np
import pytest
from flwr.app import Array
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from numpy.lib import format as npformat

from fedsys.errors import ProtocolError
from fedsys.wire import FLOAT_DTYPES, decode_array, metric


def _npy(value: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, value, allow_pickle=False)
    return buffer.getvalue()


def _raw(data: bytes) -> Array:
    return Array(dtype="float32", shape=(1,), stype="numpy.ndarray", data=data)


FLOATS = hnp.arrays(
    dtype=st.sampled_from(["<f2", ">f2", "<f4", ">f4", "<f8", ">f8"]),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),
)


@settings(max_examples=60, deadline=None)
@given(value=FLOATS, fortran=st.booleans())
def test_float_arrays_round_trip_in_native_byte_order(value, fortran):
    sent = np.array(value, order="F" if fortran else "C")

    got = decode_array(Array(sent), name="x")

    assert got.shape == value.shape and got.dtype == value.dtype.newbyteorder("=")
    np.testing.assert_array_equal(got, value)
    assert got.flags.writeable and got.flags.c_contiguous


@settings(max_examples=200, deadline=None)
@given(
    value=hnp.arrays(
        dtype=st.sampled_from(["<f4", "<u8", "<i4", "|b1", "<c8", "<U2"]), shape=st.integers(0, 6)
    ),
    cut=st.integers(0, 16),
    noise=st.binary(max_size=12),
    at=st.integers(0, 200),
)
def test_mutated_npy_bytes_decode_or_raise_protocol_error(value, cut, noise, at):
    data = bytearray(_npy(value))
    data[at:at] = noise  # inserted into the header, the body or past the end
    del data[len(data) - cut :]

    try:
        got = decode_array(_raw(bytes(data)), name="x")
    except ProtocolError:
        return
    assert got.dtype in FLOAT_DTYPES and got.nbytes <= len(data)  # no allocation beyond what was sent


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x93NUMPY",
        b"PK\x03\x04 an npz",
        b"\x80\x04K\x01.",  # a pickle
        _npy(np.zeros(3, np.float32))[:-1],
        _npy(np.zeros(3, np.float32)) + b"\0",
        _npy(np.zeros(3, np.int32)),
        _npy(np.zeros(3, [("a", "<f4")])),
        _npy(np.zeros((3, 2), "<f4")).replace(b"(3, 2)", b"(3,-2)"),
    ],
)
def test_anything_but_a_plain_float_npy_is_a_protocol_error(data):
    with pytest.raises(ProtocolError, match="'x'"):
        decode_array(_raw(data), name="x")


def test_a_header_cannot_claim_more_than_the_payload_holds():
    buffer = io.BytesIO()
    npformat.write_array_header_1_0(buffer, {"descr": "<f8", "fortran_order": False, "shape": (10**12,)})

    with pytest.raises(ProtocolError, match="needs 8000000000000 bytes, got 8"):
        decode_array(_raw(buffer.getvalue() + b"\0" * 8), name="x")


def test_the_shape_and_the_serialisation_type_are_checked():
    with pytest.raises(ProtocolError, match=r"shape \(3,\), expected \(4,\)"):
        decode_array(Array(np.zeros(3, np.float32)), name="x", shape=(4,))
    with pytest.raises(ProtocolError, match="'torch.Tensor'"):
        decode_array(Array(dtype="float32", shape=(1,), stype="torch.Tensor", data=b""), name="x")


@pytest.mark.parametrize(
    "value", [[1.0], float("nan"), float("inf"), -float("inf"), True, "3", None, 10**400]
)
def test_a_metric_must_be_one_finite_number(value):
    with pytest.raises(ProtocolError, match="'m'"):
        metric({"m": value}, "m")


def test_a_missing_metric_takes_its_default():
    assert metric({}, "m", 1.0) == 1.0 and metric({"m": 3}, "m") == 3.0
