"""SecAgg+ server state machine (Bell et al. CCS 2020, Alg. 2, over Bonawitz et al. CCS 2017, Fig. 4).

Each ``receive_*`` method takes the replies that arrived for one stage (a missing sender has dropped)
and returns the requests for the next. Replies are validated before any state changes, so a caller may
drop one offending reply after a ``ProtocolError`` and call again. Sets follow the papers: U1 advertised
keys, U2 shared keys, U3 sent masked inputs, U4 answered unmasking. Clients whose shares another client
could not open are excluded like dropouts (their masked input is discarded, their s-key reconstructed).
If fewer than ``min_survivors`` clients remain, or some needed secret has fewer than t live holders, the
round aborts with ``AbortedRoundError`` and releases no aggregate; the check runs before unmasking so no
share is revealed for a round that cannot finish.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from fedsys.errors import AbortedRoundError, ConfigError, IntegrityError, ProtocolError
from fedsys.secagg import shamir
from fedsys.secagg.encoding import (
    check_encoding,
    decode_weighted,
    dequantize_sum,
    mean_error_bound,
    ring_bits_for,
)
from fedsys.secagg.graph import build_neighbour_graph, check_threshold, default_threshold
from fedsys.secagg.masking import apply_mask, pairwise_seed, pairwise_sign, reduce
from fedsys.secagg.messages import (
    AdvertiseKeysReply,
    MaskedInputReply,
    MaskedInputRequest,
    PeerKeys,
    SetupRequest,
    ShareKeysReply,
    ShareKeysRequest,
    Stage,
    UnmaskReply,
    UnmaskRequest,
)
from fedsys.secagg.prg import SEED_BYTES
from fedsys.secagg.primitives import KEY_BYTES, RoundContext, envelope_length, load_private_key, public_key_of

_ENVELOPE_BYTES = envelope_length(2 * shamir.share_bytes_length())


class _Reply(Protocol):
    @property
    def context(self) -> RoundContext: ...


@dataclass(frozen=True, kw_only=True)
class SecAggParams:
    """Round parameters chosen by the server operator.

    Args:
        max_weight: W, public upper bound on a client's weight (example count); see
            :mod:`fedsys.secagg.encoding` for the weighting scheme.
        clip_range: c, each (unweighted) update coordinate is clipped to [-c, c].
        quant_bits: b, quantisation grid of 2^b points over [-c, c].
        degree: k, neighbours per client; ``None`` = :func:`fedsys.secagg.graph.default_degree`.
        threshold: t of the k + 1 holders; ``None`` = floor((k + 1) / 2) + 1.
        min_survivors: fewest contributors for which an aggregate is released; ``None`` = t.
    """

    max_weight: float
    clip_range: float = 8.0
    quant_bits: int = 20
    degree: int | None = None
    threshold: int | None = None
    min_survivors: int | None = None

    def __post_init__(self) -> None:
        check_encoding(clip_range=self.clip_range, quant_bits=self.quant_bits)
        if not (math.isfinite(self.max_weight) and self.max_weight > 0):
            raise ConfigError(f"secagg max-weight must be finite and > 0, got {self.max_weight}")
        if self.min_survivors is not None and self.min_survivors < 2:
            raise ConfigError(f"secagg min-survivors must be >= 2, got {self.min_survivors}")


@dataclass(frozen=True)
class AggregateResult:
    """The released aggregate and round diagnostics.

    ``average`` is sum w_i x_i / sum w_i over ``contributors`` (x_i clipped to [-c, c]);
    ``mean_error_bound`` = 2 n delta / B_hat bounds its per-coordinate quantisation error.
    ``survivors_per_stage`` is (|U1|, |U2|, |contributors|, |U4|).
    """

    average: NDArray[np.float64]
    weighted_sum: NDArray[np.float64]
    total_weight: float
    contributors: tuple[int, ...]
    dropped: tuple[int, ...]
    excluded: tuple[int, ...]
    survivors_per_stage: tuple[int, ...]
    mean_error_bound: float


class SecAggServer:
    """The server's side of one SecAgg+ round.

    Args:
        participants: distinct client ids (>= 1) selected for the round.
        context: run id and round number every message is bound to.
        vector_length: length of each client's update.
        params: operator-chosen parameters.

    Raises:
        ConfigError: invalid participants, degree, threshold or encoding.
    """

    def __init__(
        self, participants: Sequence[int], *, context: RoundContext, vector_length: int, params: SecAggParams
    ) -> None:
        if not all(1 <= u < 2**63 for u in participants):
            raise ConfigError(f"secagg participant ids must be in [1, 2^63), got {sorted(participants)}")
        if vector_length < 1:
            raise ConfigError(f"secagg vector length must be >= 1, got {vector_length}")
        self.context, self.params, self.vector_length = context, params, vector_length
        self.graph = build_neighbour_graph(participants, degree=params.degree)
        holders = len(next(iter(self.graph.values()))) + 1
        self.threshold = default_threshold(holders) if params.threshold is None else params.threshold
        check_threshold(self.threshold, num_holders=holders)
        self.min_survivors = self.threshold if params.min_survivors is None else params.min_survivors
        if self.min_survivors > len(participants):
            raise ConfigError(
                f"secagg min-survivors {self.min_survivors} exceeds {len(participants)} participants"
            )
        self.ring_bits = ring_bits_for(quant_bits=params.quant_bits, num_clients=len(participants))
        self._next: Stage | None = Stage.SETUP
        self._keys: dict[int, PeerKeys] = {}
        self._share_targets: dict[int, frozenset[int]] = {}
        self._mask_sets: dict[int, frozenset[int]] = {}
        self._requests: dict[int, UnmaskRequest] = {}
        self._contributors: frozenset[int] = frozenset()
        self._excluded: frozenset[int] = frozenset()
        self._needs_s_key: frozenset[int] = frozenset()
        self._total = np.zeros(0, dtype=np.uint64)
        self._counts: list[int] = []

    def setup_requests(self) -> dict[int, SetupRequest]:
        """Stage 0: the parameters and neighbour list for each participant."""
        self._check_stage(Stage.SETUP)
        self._next = Stage.ADVERTISE_KEYS
        return {u: self._setup_request(u) for u in self.graph}

    def receive_keys(self, replies: Mapping[int, AdvertiseKeysReply]) -> dict[int, ShareKeysRequest]:
        """Stage 1 -> 2: record public keys (U1) and send each client its live neighbours' keys.

        Raises:
            ProtocolError: unexpected senders, wrong context, malformed or repeated keys.
            AbortedRoundError: fewer than ``min_survivors`` clients, after removing those with fewer
                than t live holders.
        """
        self._check_replies(Stage.ADVERTISE_KEYS, replies, self.graph.keys())
        keys = [k for reply in replies.values() for k in (reply.keys.encryption, reply.keys.masking)]
        if any(len(k) != KEY_BYTES for k in keys) or len(set(keys)) != len(keys):
            raise ProtocolError("advertised public keys must be distinct and 32 bytes each")
        active = self._peel(frozenset(replies), Stage.ADVERTISE_KEYS)
        self._keys = {u: replies[u].keys for u in active}
        self._share_targets = {u: self.graph[u] & active for u in active}
        self._next = Stage.SHARE_KEYS
        return {
            u: ShareKeysRequest(self.context, u, {v: self._keys[v] for v in targets})
            for u, targets in self._share_targets.items()
        }

    def receive_shares(self, replies: Mapping[int, ShareKeysReply]) -> dict[int, MaskedInputRequest]:
        """Stage 2 -> 3: route the envelopes among clients that shared keys (U2).

        Raises:
            ProtocolError: unexpected senders, wrong context, envelopes for the wrong recipients.
            AbortedRoundError: too few clients remain.
        """
        self._check_replies(Stage.SHARE_KEYS, replies, self._share_targets.keys())
        for u, reply in replies.items():
            if frozenset(reply.envelopes) != self._share_targets[u]:
                raise ProtocolError(
                    f"client {u} sent envelopes for {sorted(reply.envelopes)}, expected its peers"
                )
            if any(len(envelope) != _ENVELOPE_BYTES for envelope in reply.envelopes.values()):
                raise ProtocolError(f"client {u} sent envelopes of the wrong length")
        active = self._peel(frozenset(replies), Stage.SHARE_KEYS)
        self._mask_sets = {u: self.graph[u] & active for u in active}
        self._next = Stage.MASKED_INPUT
        return {
            u: MaskedInputRequest(self.context, u, {v: replies[v].envelopes[u] for v in peers})
            for u, peers in self._mask_sets.items()
        }

    def receive_masked_inputs(self, replies: Mapping[int, MaskedInputReply]) -> dict[int, UnmaskRequest]:
        """Stage 3 -> 4: sum masked inputs (U3), exclude reported peers, ask survivors for shares.

        Raises:
            ProtocolError: unexpected senders, wrong context, malformed vectors or failure reports.
            AbortedRoundError: too few contributors, or a needed secret with fewer than t live holders.
        """
        self._check_replies(Stage.MASKED_INPUT, replies, self._mask_sets.keys())
        for u, reply in replies.items():
            self._check_masked_input(u, reply)
        failed = {u: frozenset(reply.failed_peers) for u, reply in replies.items()}
        self._excluded = frozenset(v for peers in failed.values() for v in peers) & frozenset(replies)
        self._contributors = frozenset(replies) - self._excluded
        dropped = frozenset(self._mask_sets) - self._contributors
        self._needs_s_key = frozenset(v for v in dropped if self._mask_sets[v] & self._contributors)
        self._require_survivors(len(self._contributors), Stage.MASKED_INPUT)
        self._require_holders(frozenset(replies), failed)
        self._total = np.zeros(self.vector_length + 1, dtype=np.uint64)
        for u in self._contributors:
            np.add(self._total, replies[u].masked_input, out=self._total)
        self._counts.append(len(self._contributors))
        self._requests = {u: self._unmask_request(u, failed[u]) for u in replies}
        self._next = Stage.UNMASK
        return dict(self._requests)

    def receive_unmask(self, replies: Mapping[int, UnmaskReply]) -> AggregateResult:
        """Stage 4: reconstruct b_u of contributors and s_v of dropped peers, unmask and decode.

        Raises:
            ProtocolError: unexpected senders, wrong context, shares other than those requested.
            AbortedRoundError: a secret has fewer than t shares or its shares are inconsistent.
        """
        self._check_replies(Stage.UNMASK, replies, self._requests.keys())
        b_shares, s_shares = self._collect_shares(replies)
        self._counts.append(len(replies))
        try:
            self._remove_self_masks(b_shares)
            self._remove_dropped_masks(s_shares)
        except (ProtocolError, IntegrityError) as err:
            self._next = None
            raise AbortedRoundError(f"secagg round aborted during unmasking: {err}") from err
        self._next = None
        return self._decode()

    def _setup_request(self, u: int) -> SetupRequest:
        p = self.params
        return SetupRequest(
            context=self.context,
            recipient=u,
            neighbours=tuple(sorted(self.graph[u])),
            threshold=self.threshold,
            ring_bits=self.ring_bits,
            quant_bits=p.quant_bits,
            clip_range=p.clip_range,
            vector_length=self.vector_length,
            max_weight=p.max_weight,
        )

    def _check_stage(self, stage: Stage) -> None:
        if self._next != stage:
            expected = "none (round over)" if self._next is None else int(self._next)
            raise ProtocolError(f"secagg server expected stage {expected}, got stage {int(stage)}")

    def _check_replies(self, stage: Stage, replies: Mapping[int, _Reply], expected: Iterable[int]) -> None:
        self._check_stage(stage)
        unexpected = sorted(frozenset(replies) - frozenset(expected))
        if unexpected:
            raise ProtocolError(f"stage-{int(stage)} replies from unexpected clients {unexpected}")
        for u, reply in replies.items():
            if reply.context != self.context:
                raise ProtocolError(f"client {u} replied for another run or round; replay rejected")

    def _peel(self, candidates: frozenset[int], stage: Stage) -> frozenset[int]:
        """Drop clients whose live neighbourhood (plus themselves) has fewer than t holders, repeatedly."""
        active = set(candidates)
        while weak := {u for u in active if len(self.graph[u] & active) + 1 < self.threshold}:
            active -= weak
        self._require_survivors(len(active), stage)
        self._counts.append(len(active))
        return frozenset(active)

    def _require_survivors(self, count: int, stage: Stage) -> None:
        if count < self.min_survivors:
            self._next = None
            raise AbortedRoundError(
                f"secagg round aborted at stage {int(stage)} ({stage.name}): {count} clients left, "
                f"at least {self.min_survivors} required"
            )

    def _check_masked_input(self, u: int, reply: MaskedInputReply) -> None:
        vector = reply.masked_input
        if vector.dtype != np.uint64 or vector.shape != (self.vector_length + 1,):
            raise ProtocolError(f"client {u} sent a {vector.dtype} vector of shape {vector.shape}")
        if self.ring_bits < 64 and vector.size and int(vector.max()) >> self.ring_bits:
            raise ProtocolError(f"client {u} sent values outside Z_2^{self.ring_bits}")
        if not frozenset(reply.failed_peers) <= self._mask_sets[u]:
            raise ProtocolError(f"client {u} reported failures for peers it had no envelopes from")

    def _require_holders(self, alive: frozenset[int], failed: Mapping[int, frozenset[int]]) -> None:
        def holders(owner: int, include_owner: bool) -> int:
            peers = {h for h in self._mask_sets[owner] & alive if owner not in failed[h]}
            return len(peers) + include_owner

        short = [u for u in self._contributors if holders(u, True) < self.threshold]
        short += [v for v in self._needs_s_key if holders(v, False) < self.threshold]
        if short:
            self._next = None
            raise AbortedRoundError(f"secagg round aborted: secrets of {sorted(short)} have < t live holders")

    def _unmask_request(self, u: int, failed: frozenset[int]) -> UnmaskRequest:
        peers = self._mask_sets[u] - failed
        survivors = (peers & self._contributors) | (self._contributors & {u})
        return UnmaskRequest(
            self.context, u, tuple(sorted(survivors)), tuple(sorted(peers & self._needs_s_key))
        )

    def _collect_shares(
        self, replies: Mapping[int, UnmaskReply]
    ) -> tuple[dict[int, dict[int, int]], dict[int, dict[int, int]]]:
        b_shares: dict[int, dict[int, int]] = {u: {} for u in self._contributors}
        s_shares: dict[int, dict[int, int]] = {v: {} for v in self._needs_s_key}
        for holder, reply in replies.items():
            request = self._requests[holder]
            if set(reply.b_shares) != set(request.survivors) or set(reply.s_shares) != set(request.dropped):
                raise ProtocolError(f"client {holder} returned shares other than those requested")
            for owner, data in reply.b_shares.items():
                b_shares[owner][holder] = shamir.decode_share(data)
            for owner, data in reply.s_shares.items():
                s_shares[owner][holder] = shamir.decode_share(data)
        return b_shares, s_shares

    def _remove_self_masks(self, b_shares: Mapping[int, Mapping[int, int]]) -> None:
        for u, shares in sorted(b_shares.items()):
            try:
                seed = shamir.reconstruct_secret(shares, threshold=self.threshold, secret_length=SEED_BYTES)
            except ProtocolError as err:
                raise IntegrityError(f"cannot reconstruct the self-mask seed of client {u}: {err}") from err
            apply_mask(self._total, seed, sign=-1, ring_bits=self.ring_bits)

    def _remove_dropped_masks(self, s_shares: Mapping[int, Mapping[int, int]]) -> None:
        for v, shares in sorted(s_shares.items()):
            try:
                raw = shamir.reconstruct_secret(shares, threshold=self.threshold, secret_length=KEY_BYTES)
            except ProtocolError as err:
                raise IntegrityError(f"cannot reconstruct the s-key of client {v}: {err}") from err
            private = load_private_key(raw)
            if public_key_of(private) != self._keys[v].masking:
                raise IntegrityError(f"reconstructed s-key of client {v} does not match its advertised key")
            for u in sorted(self._mask_sets[v] & self._contributors):
                seed = pairwise_seed(private, self._keys[u].masking, context=self.context)
                apply_mask(self._total, seed, sign=pairwise_sign(v, u), ring_bits=self.ring_bits)

    def _decode(self) -> AggregateResult:
        p, n = self.params, len(self._contributors)
        total = reduce(self._total, ring_bits=self.ring_bits)
        real = dequantize_sum(total, num_summands=n, clip_range=p.clip_range, quant_bits=p.quant_bits)
        weighted, weight_fraction = decode_weighted(real, max_weight=p.max_weight, clip_range=p.clip_range)
        if weight_fraction <= 0:
            raise AbortedRoundError(
                f"total weight decoded as {weight_fraction}; raise quant-bits or lower max-weight"
            )
        bound = mean_error_bound(
            num_summands=n, clip_range=p.clip_range, quant_bits=p.quant_bits, weight_sum=weight_fraction
        )
        return AggregateResult(
            average=weighted / weight_fraction,
            weighted_sum=weighted * p.max_weight,
            total_weight=weight_fraction * p.max_weight,
            contributors=tuple(sorted(self._contributors)),
            dropped=tuple(sorted(frozenset(self.graph) - self._contributors - self._excluded)),
            excluded=tuple(sorted(self._excluded)),
            survivors_per_stage=tuple(self._counts),
            mean_error_bound=bound,
        )
