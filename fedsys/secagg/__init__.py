"""Secure aggregation: SecAgg+ (Bell et al. CCS 2020) over the stages of SecAgg (Bonawitz et al. CCS 2017).

Transport-agnostic state machines: :class:`SecAggServer` and :class:`SecAggClient` exchange the
dataclasses in :mod:`fedsys.secagg.messages`, each convertible to a flat record for Flower. Threat model:
malicious clients (a minority may collude) and, in malicious mode (clients hold identity keys and a
trusted peer set), an actively malicious server that may also collude with up to gamma n clients; the
server learns only the weighted sum of the updates of every client it saw complete stage 3, or the round
aborts with nothing released. Client reports about peers are never trusted (:mod:`fedsys.secagg.server`);
see :mod:`fedsys.secagg.consistency` and :mod:`fedsys.secagg.graph` for the malicious-server checks and
parameters. Not covered: robustness of the aggregate's value to clients that lie about their own input.
"""

from __future__ import annotations

from fedsys.secagg.client import SecAggClient
from fedsys.secagg.identity import Identity, generate_identity, load_identity, load_trusted_peers
from fedsys.secagg.local import run_local_round
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
)
from fedsys.secagg.primitives import RoundContext
from fedsys.secagg.server import AggregateResult, SecAggParams, SecAggServer

__all__ = [
    "AdvertiseKeysReply",
    "AggregateResult",
    "ConsistencyReply",
    "ConsistencyRequest",
    "Identity",
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
    "generate_identity",
    "load_identity",
    "load_trusted_peers",
    "run_local_round",
]
