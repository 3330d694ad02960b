"""In-memory driver running one SecAgg+ round between N clients and a server, for tests and benchmarks.

Every message goes through ``to_record()`` / ``from_record()`` as it would over a transport, and an
optional ``intercept`` hook may rewrite records in flight (to simulate tampering or replay). A reply that
fails to parse counts as that client's dropout, as it does on Flower. With ``identities`` the round runs
against a malicious server's checks: each client signs with its identity and trusts exactly the given
identities' public keys (a simulated PKI).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol, TypeVar

import numpy as np
from numpy.typing import NDArray

from fedsys.errors import ConfigError, ProtocolError
from fedsys.secagg.client import SecAggClient
from fedsys.secagg.identity import Identity
from fedsys.secagg.messages import (
    AdvertiseKeysReply,
    ConsistencyReply,
    ConsistencyRequest,
    MaskedInputReply,
    MaskedInputRequest,
    Record,
    SetupRequest,
    ShareKeysReply,
    ShareKeysRequest,
    UnmaskReply,
    UnmaskRequest,
)
from fedsys.secagg.primitives import RoundContext
from fedsys.secagg.server import AggregateResult, SecAggParams, SecAggServer

Intercept = Callable[[type, int, Record], Record]
"""Hook ``(message_class, client_id, record) -> record`` applied to every message in flight."""

_M = TypeVar("_M")
_Req = TypeVar("_Req")
_Rep = TypeVar("_Rep")


class _Recordable(Protocol):
    def to_record(self) -> Record: ...


def run_local_round(
    updates: Sequence[NDArray[np.floating]],
    weights: Sequence[float],
    *,
    rng: np.random.Generator,
    params: SecAggParams | None = None,
    drop_after: Mapping[int, int] | None = None,
    context: RoundContext | None = None,
    intercept: Intercept | None = None,
    identities: Mapping[int, Identity] | None = None,
    extras: Sequence[NDArray[np.uint64]] | None = None,
) -> AggregateResult:
    """Run a full SecAgg+ round in memory and return the server's aggregate.

    Client ids are 1-based positions in ``updates``.

    Args:
        updates: one equally long real vector per client; in integer-input mode
            (``params.integer_ring_bits``), one uint64 vector in Z_2^k per client.
        weights: one weight (example count) per client.
        rng: generator for the clients' stochastic rounding.
        params: server parameters; default ``SecAggParams(max_weight=max(weights))``.
        drop_after: client id -> last stage (0-3) it completes before going silent; 0 means it
            never answers, 3 means it sends its masked input but not its shares.
        context: run id and round; default run 0, round 1.
        intercept: optional hook rewriting records in flight.
        identities: client id -> long-term identity; given, the clients demand the malicious-server
            checks (``params.mode`` must then be ``"malicious"``).
        extras: one vector of ``params.extra_length`` ring elements per client, masked after its update.

    Raises:
        ConfigError: mismatched inputs. AbortedRoundError, ProtocolError, IntegrityError: as raised
        by the protocol.
    """
    if len(updates) != len(weights) or not updates:
        raise ConfigError(f"need one weight per update, got {len(updates)} updates, {len(weights)} weights")
    ids = list(range(1, len(updates) + 1))
    server = SecAggServer(
        ids,
        context=RoundContext(run_id=0, round=1) if context is None else context,
        vector_length=len(updates[0]),
        params=SecAggParams(max_weight=max(weights)) if params is None else params,
    )
    trusted = frozenset(i.public for i in identities.values()) if identities else None
    clients = {
        u: SecAggClient(u, identity=identities[u], trusted_peers=trusted) if identities else SecAggClient(u)
        for u in ids
    }
    relay = _Relay(dict(drop_after or {}), intercept)
    keys = relay.round_trip(
        1,
        server.setup_requests(),
        SetupRequest.from_record,
        lambda u, r: clients[u].advertise_keys(r),
        AdvertiseKeysReply.from_record,
    )
    shares = relay.round_trip(
        2,
        server.receive_keys(keys),
        ShareKeysRequest.from_record,
        lambda u, r: clients[u].share_keys(r),
        ShareKeysReply.from_record,
    )
    masked = relay.round_trip(
        3,
        server.receive_shares(shares),
        MaskedInputRequest.from_record,
        lambda u, r: (
            clients[u].mask_integer_input(r, encoded=np.asarray(updates[u - 1], dtype=np.uint64))
            if server.params.integer_ring_bits is not None
            else clients[u].mask_input(
                r,
                update=updates[u - 1],
                weight=weights[u - 1],
                rng=rng,
                extra=None if extras is None else extras[u - 1],
            )
        ),
        MaskedInputReply.from_record,
    )
    if server.malicious:
        signatures = relay.round_trip(
            4,
            server.receive_masked_inputs_for_check(masked),
            ConsistencyRequest.from_record,
            lambda u, r: clients[u].sign_survivors(r),
            ConsistencyReply.from_record,
        )
        unmask_requests = server.receive_consistency(signatures)
    else:
        unmask_requests = server.receive_masked_inputs(masked)
    unmasked = relay.round_trip(
        4,
        unmask_requests,
        UnmaskRequest.from_record,
        lambda u, r: clients[u].unmask(r),
        UnmaskReply.from_record,
    )
    return server.receive_unmask(unmasked)


class _Relay:
    """Carries messages as records, drops clients after their last stage, applies the intercept hook."""

    def __init__(self, last_stage: dict[int, int], intercept: Intercept | None) -> None:
        self._last_stage, self._intercept = last_stage, intercept

    def round_trip(
        self,
        stage: int,
        requests: Mapping[int, _Recordable],
        parse_request: Callable[[Record], _Req],
        handle: Callable[[int, _Req], _Recordable],
        parse_reply: Callable[[Record], _Rep],
    ) -> dict[int, _Rep]:
        """Deliver ``requests`` to live clients and bring back their replies for ``stage``."""
        replies = {}
        for u, request in requests.items():
            if self._last_stage.get(u, 4) >= stage:
                reply = handle(u, self._carry(request, parse_request, u))
                try:
                    replies[u] = self._carry(reply, parse_reply, u)
                except ProtocolError:
                    continue  # unparseable: the sender's failure, as on the real transport
        return replies

    def _carry(self, message: _Recordable, parse: Callable[[Record], _M], u: int) -> _M:
        record = message.to_record()
        if self._intercept is not None:
            record = self._intercept(type(message), u, record)
        return parse(record)
