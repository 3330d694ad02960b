"""Secure aggregation: SecAgg+ (Bell et al. CCS 2020) over the stages of SecAgg (Bonawitz et al. CCS 2017).

Transport-agnostic state machines: :class:`SecAggServer` and :class:`SecAggClient` exchange the
dataclasses in :mod:`fedsys.secagg.messages`, each convertible to a flat record for Flower. Threat model:
an honest-but-curious server and clients (a minority may collude); the server learns only the weighted
sum of at least ``min_survivors`` updates. Not covered: a server that actively lies about who dropped
beyond what clients can check locally (no signatures / consistency-check round), and robustness to
clients sending wrong shares (the round aborts instead).
"""

from __future__ import annotations

from fedsys.secagg.client import SecAggClient
from fedsys.secagg.local import run_local_round
from fedsys.secagg.messages import (
    AdvertiseKeysReply,
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
)
from fedsys.secagg.primitives import RoundContext
from fedsys.secagg.server import AggregateResult, SecAggParams, SecAggServer

__all__ = [
    "AdvertiseKeysReply",
    "AggregateResult",
    "MaskedInputReply",
    "MaskedInputRequest",
    "PeerKeys",
    "Record",
    "RoundContext",
    "SecAggClient",
    "SecAggParams",
    "SecAggServer",
    "SetupRequest",
    "ShareKeysReply",
    "ShareKeysRequest",
    "Stage",
    "UnmaskReply",
    "UnmaskRequest",
    "run_local_round",
]
