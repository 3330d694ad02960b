"""SecAgg+ server state machine (Bell et al. CCS 2020, Alg. 2, over Bonawitz et al. CCS 2017, Fig. 4).

Each ``receive_*`` method takes the replies that arrived for one stage (a missing sender has dropped)
and returns the requests for the next. Sets follow the papers: U1 advertised keys, U2 shared keys, U3
sent masked inputs, U4 answered unmasking.

Dropouts are decided only from what the server observed. A malformed reply (wrong context, duplicate,
short or small-order key, bad signature, envelopes of the wrong length or for the wrong peers, a vector
outside the ring, undecodable or wrong shares) makes its sender ``excluded``: treated as dropped from
that stage on, while the stage continues with the rest. A client's report that it could not open a
peer's envelope is *not* trusted against that peer: the reporter simply holds no shares of it and is not
asked for them. Every client in U3 is therefore summed, and the round aborts (``AbortedRoundError``, no
aggregate) when fewer than ``min_survivors`` remain or some needed secret has fewer than t holders able
to give a share; that check runs before unmasking, so no share is revealed for a round that cannot
finish. Against a malicious server (``mode="malicious"``) the round adds the ConsistencyCheck stage of
Bonawitz et al. CCS 2017 (Fig. 4, round 3); see :mod:`fedsys.secagg.identity`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol, TypeVar

import numpy as np

from fedsys.errors import AbortedRoundError, ConfigError, ProtocolError
from fedsys.secagg import shamir
from fedsys.secagg.encoding import (
    decode_weighted,
    dequantize_sum,
    mean_error_bound,
    ring_bits_for,
)
from fedsys.secagg.graph import (
    build_neighbour_graph,
    check_threshold,
    default_threshold,
    malicious_threshold,
)
from fedsys.secagg.identity import keys_payload, participants_digest, survivors_payload, verify
from fedsys.secagg.masking import apply_mask, pairwise_seed, pairwise_sign, reduce
from fedsys.secagg.messages import (
    AdvertiseKeysReply,
    ConsistencyReply,
    ConsistencyRequest,
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
from fedsys.secagg.params import AggregateResult as AggregateResult
from fedsys.secagg.params import SecAggParams as SecAggParams
from fedsys.secagg.prg import SEED_BYTES
from fedsys.secagg.primitives import (
    KEY_BYTES,
    RoundContext,
    check_public_key,
    envelope_length,
    load_private_key,
    public_key_of,
)
from fedsys.secagg.recovery import reconstruct_all

_ENVELOPE_BYTES = envelope_length(2 * shamir.share_bytes_length())


class _Reply(Protocol):
    @property
    def context(self) -> RoundContext: ...


_R = TypeVar("_R", bound=_Reply)


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
        self.malicious = params.mode == "malicious"
        n = len(participants)
        if self.malicious and params.degree is not None and params.degree < n - 1:
            raise ConfigError(
                f"secagg against a malicious server needs the complete graph, got degree {params.degree}"
            )
        self.graph = build_neighbour_graph(participants, degree=n - 1 if self.malicious else params.degree)
        holders = len(next(iter(self.graph.values()))) + 1
        self.threshold = params.threshold or (
            malicious_threshold(holders, corruption_fraction=params.corruption_fraction)
            if self.malicious
            else default_threshold(holders)
        )
        check_threshold(self.threshold, num_holders=holders)
        self.min_survivors = self.threshold if params.min_survivors is None else params.min_survivors
        if self.min_survivors > n:
            raise ConfigError(f"secagg min-survivors {self.min_survivors} exceeds {n} participants")
        self.ring_bits = params.integer_ring_bits or max(
            ring_bits_for(quant_bits=params.quant_bits, num_clients=n), params.min_ring_bits
        )
        self.rejections: dict[int, str] = {}
        """Client id -> why its reply was rejected (the client counts as dropped from then on)."""
        self._cohort = participants_digest(self.graph)
        self._next: Stage | None = Stage.SETUP
        self._keys: dict[int, PeerKeys] = {}
        self._share_targets: dict[int, frozenset[int]] = {}
        self._mask_sets: dict[int, frozenset[int]] = {}
        self._failed: dict[int, frozenset[int]] = {}
        self._signatures: dict[int, bytes] = {}
        self._requests: dict[int, UnmaskRequest] = {}
        self._contributors: frozenset[int] = frozenset()
        self._needs_s_key: frozenset[int] = frozenset()
        self._total = np.zeros(0, dtype=np.uint64)
        self._counts: list[int] = []

    @property
    def _masked_length(self) -> int:
        """Length of a masked input: the update plus its weight coordinate (none for integer inputs)."""
        if self.params.integer_ring_bits is not None:
            return self.vector_length
        return self.vector_length + 1 + self.params.extra_length

    def setup_requests(self) -> dict[int, SetupRequest]:
        """Stage 0: the parameters and neighbour list for each participant."""
        self._check_stage(Stage.SETUP)
        self._next = Stage.ADVERTISE_KEYS
        return {u: self._setup_request(u) for u in self.graph}

    def receive_keys(self, replies: Mapping[int, AdvertiseKeysReply]) -> dict[int, ShareKeysRequest]:
        """Stage 1 -> 2: record valid public keys (U1) and send each client its live neighbours' keys.

        Raises:
            ProtocolError: wrong stage or senders that are not participants.
            AbortedRoundError: fewer than ``min_survivors`` clients, after removing those with fewer
                than t live holders.
        """
        valid = self._screen(Stage.ADVERTISE_KEYS, replies, self.graph.keys(), self._key_problem)
        counts = Counter(k for r in valid.values() for k in {r.keys.encryption, r.keys.masking})
        identities = Counter(r.keys.identity for r in valid.values())
        for u, reply in valid.items():
            keys = reply.keys
            if counts[keys.encryption] > 1 or counts[keys.masking] > 1 or keys.encryption == keys.masking:
                self._reject(u, Stage.ADVERTISE_KEYS, "advertised a public key that is not unique")
            elif keys.identity and identities[keys.identity] > 1:
                self._reject(u, Stage.ADVERTISE_KEYS, "shares its identity key with another client")
        active = self._peel(frozenset(valid) - self.rejections.keys(), Stage.ADVERTISE_KEYS)
        self._keys = {u: valid[u].keys for u in active}
        self._share_targets = {u: self.graph[u] & active for u in active}
        self._next = Stage.SHARE_KEYS
        return {
            u: ShareKeysRequest(self.context, u, {v: self._keys[v] for v in targets})
            for u, targets in self._share_targets.items()
        }

    def receive_shares(self, replies: Mapping[int, ShareKeysReply]) -> dict[int, MaskedInputRequest]:
        """Stage 2 -> 3: route the envelopes among clients that shared keys correctly (U2).

        Raises:
            ProtocolError: wrong stage or senders that were not asked.
            AbortedRoundError: too few clients remain.
        """
        valid = self._screen(Stage.SHARE_KEYS, replies, self._share_targets.keys(), self._envelope_problem)
        active = self._peel(frozenset(valid), Stage.SHARE_KEYS)
        self._mask_sets = {u: self.graph[u] & active for u in active}
        self._next = Stage.MASKED_INPUT
        return {
            u: MaskedInputRequest(self.context, u, {v: valid[v].envelopes[u] for v in peers})
            for u, peers in self._mask_sets.items()
        }

    def receive_masked_inputs(self, replies: Mapping[int, MaskedInputReply]) -> dict[int, UnmaskRequest]:
        """Stage 3 -> 4 (semi-honest mode): sum valid masked inputs (U3), ask survivors for shares.

        Raises:
            ProtocolError: wrong stage, unexpected senders, or malicious mode (use
                :meth:`receive_masked_inputs_for_check`).
            AbortedRoundError: too few contributors, or a needed secret with fewer than t holders.
        """
        if self.malicious:
            raise ProtocolError("a malicious-mode round runs the consistency check before unmasking")
        self._accept_masked_inputs(replies)
        self._next = Stage.UNMASK
        return self._unmask_requests()

    def receive_masked_inputs_for_check(
        self, replies: Mapping[int, MaskedInputReply]
    ) -> dict[int, ConsistencyRequest]:
        """Stage 3 -> consistency check (malicious mode): fix U3 and ask each member to sign it.

        Raises:
            ProtocolError: wrong stage, unexpected senders, or semi-honest mode.
            AbortedRoundError: too few contributors, or a needed secret with fewer than t holders.
        """
        if not self.malicious:
            raise ProtocolError("a semi-honest round has no consistency check")
        self._accept_masked_inputs(replies)
        self._next = Stage.CONSISTENCY_CHECK
        survivors = tuple(sorted(self._contributors))
        return {u: ConsistencyRequest(self.context, u, survivors) for u in self._contributors}

    def receive_consistency(self, replies: Mapping[int, ConsistencyReply]) -> dict[int, UnmaskRequest]:
        """Consistency check -> stage 4: collect signatures on U3; clients will demand t of them.

        Raises:
            ProtocolError: wrong stage or unexpected senders.
            AbortedRoundError: fewer than t valid signatures.
        """
        payload = survivors_payload(self.context, cohort=self._cohort, survivors=sorted(self._contributors))

        def problem(u: int, reply: ConsistencyReply) -> str | None:
            ok = verify(self._keys[u].identity, reply.signature, payload)
            return None if ok else "signed something other than the survivor set"

        valid = self._screen(Stage.CONSISTENCY_CHECK, replies, self._contributors, problem)
        if len(valid) < self.threshold:
            self._next = None
            raise AbortedRoundError(
                f"secagg round aborted: {len(valid)} survivors signed U3, at least {self.threshold} required"
            )
        self._signatures = {u: reply.signature for u, reply in valid.items()}
        self._next = Stage.UNMASK
        return self._unmask_requests()

    def receive_unmask(self, replies: Mapping[int, UnmaskReply]) -> AggregateResult:
        """Stage 4: reconstruct b_u of contributors and s_v of dropped peers, unmask and decode.

        Raises:
            ProtocolError: wrong stage or unexpected senders.
            AbortedRoundError: a secret has fewer than t valid shares, or wrong shares cannot be blamed.
        """
        valid = self._screen(Stage.UNMASK, replies, self._requests.keys(), self._share_problem)
        self._counts.append(len(valid))
        b_shares, s_shares = self._collect_shares(valid)
        self._next = None
        seeds, bad_b = reconstruct_all(b_shares, threshold=self.threshold, secret_length=SEED_BYTES)
        keys, bad_s = reconstruct_all(
            s_shares,
            threshold=self.threshold,
            secret_length=KEY_BYTES,
            check=lambda v, raw: public_key_of(load_private_key(raw)) == self._keys[v].masking,
        )
        for holder in sorted(bad_b | bad_s):
            self.rejections[holder] = f"stage {int(Stage.UNMASK)}: sent a share inconsistent with the others"
        for _, seed in sorted(seeds.items()):
            apply_mask(self._total, seed, sign=-1, ring_bits=self.ring_bits)
        self._remove_dropped_masks(keys)
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
            integer_input=p.integer_ring_bits is not None,
            integer_scale=p.integer_scale,
            extra_length=p.extra_length,
        )

    def _check_stage(self, stage: Stage) -> None:
        if self._next != stage:
            expected = "none (round over)" if self._next is None else int(self._next)
            raise ProtocolError(f"secagg server expected stage {expected}, got stage {int(stage)}")

    def _screen(
        self,
        stage: Stage,
        replies: Mapping[int, _R],
        expected: Iterable[int],
        problem: Callable[[int, _R], str | None],
    ) -> dict[int, _R]:
        """The replies that pass ``problem``; every other sender is rejected and counts as dropped."""
        self._check_stage(stage)
        unexpected = sorted(frozenset(replies) - frozenset(expected))
        if unexpected:
            raise ProtocolError(f"stage-{int(stage)} replies from unexpected clients {unexpected}")
        valid = {}
        for u, reply in sorted(replies.items()):
            replay = reply.context != self.context
            reason = "replied for another run or round" if replay else problem(u, reply)
            if reason is None:
                valid[u] = reply
            else:
                self._reject(u, stage, reason)
        return valid

    def _reject(self, u: int, stage: Stage, reason: str) -> None:
        self.rejections[u] = f"stage {int(stage)} ({stage.name}): {reason}"

    def _key_problem(self, u: int, reply: AdvertiseKeysReply) -> str | None:
        keys = reply.keys
        if len(keys.encryption) != KEY_BYTES or len(keys.masking) != KEY_BYTES:
            return f"public keys must be {KEY_BYTES} bytes"
        if not (check_public_key(keys.encryption) and check_public_key(keys.masking)):
            return "advertised an invalid or small-order X25519 key"
        if self.malicious:
            signed = keys_payload(
                self.context, sender=u, cohort=self._cohort, encryption=keys.encryption, masking=keys.masking
            )
            if not keys.identity or not verify(keys.identity, keys.signature, signed):
                return "keys are not signed by the identity key it sent"
        return None

    def _envelope_problem(self, u: int, reply: ShareKeysReply) -> str | None:
        if frozenset(reply.envelopes) != self._share_targets[u]:
            return f"sent envelopes for {sorted(reply.envelopes)}, not for its peers"
        if any(len(envelope) != _ENVELOPE_BYTES for envelope in reply.envelopes.values()):
            return "sent envelopes of the wrong length"
        return None

    def _vector_problem(self, u: int, reply: MaskedInputReply) -> str | None:
        vector = reply.masked_input
        if vector.dtype != np.uint64 or vector.shape != (self._masked_length,):
            return f"sent a {vector.dtype} vector of shape {vector.shape}"
        if self.ring_bits < 64 and vector.size and int(vector.max()) >> self.ring_bits:
            return f"sent values outside Z_2^{self.ring_bits}"
        if not frozenset(reply.failed_peers) <= self._mask_sets[u]:
            return "reported failures for peers it had no envelopes from"
        return None

    def _share_problem(self, u: int, reply: UnmaskReply) -> str | None:
        request = self._requests[u]
        if set(reply.b_shares) != set(request.survivors) or set(reply.s_shares) != set(request.dropped):
            return "returned shares other than those requested"
        try:
            for data in (*reply.b_shares.values(), *reply.s_shares.values()):
                shamir.decode_share(data)
        except ProtocolError as err:
            return f"sent an undecodable share: {err}"
        return None

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

    def _accept_masked_inputs(self, replies: Mapping[int, MaskedInputReply]) -> None:
        valid = self._screen(Stage.MASKED_INPUT, replies, self._mask_sets.keys(), self._vector_problem)
        self._failed = {u: frozenset(reply.failed_peers) for u, reply in valid.items()}
        self._contributors = frozenset(valid)
        dropped = frozenset(self._mask_sets) - self._contributors
        self._needs_s_key = frozenset(v for v in dropped if self._mask_sets[v] & self._contributors)
        self._require_survivors(len(self._contributors), Stage.MASKED_INPUT)
        self._require_holders()
        self._total = np.zeros(self._masked_length, dtype=np.uint64)
        for u in sorted(self._contributors):
            np.add(self._total, valid[u].masked_input, out=self._total)
        self._counts.append(len(self._contributors))

    def _require_holders(self) -> None:
        """Abort before any share is revealed if some needed secret cannot reach t shares. A holder's
        report that it could not open the owner's envelope only removes that holder."""

        def holders(owner: int) -> int:
            peers = {h for h in self._mask_sets[owner] & self._contributors if owner not in self._failed[h]}
            return len(peers) + (owner in self._contributors)

        short = sorted(u for u in self._contributors | self._needs_s_key if holders(u) < self.threshold)
        if short:
            self._next = None
            raise AbortedRoundError(f"secagg round aborted: secrets of {short} have < t holders to share")

    def _unmask_requests(self) -> dict[int, UnmaskRequest]:
        self._requests = {}
        for u in sorted(self._contributors):
            peers = self._mask_sets[u] - self._failed[u]
            survivors = (peers & self._contributors) | {u}
            dropped = peers & self._needs_s_key
            request = UnmaskRequest(
                self.context, u, tuple(sorted(survivors)), tuple(sorted(dropped)), dict(self._signatures)
            )
            self._requests[u] = request
        return dict(self._requests)

    def _collect_shares(
        self, replies: Mapping[int, UnmaskReply]
    ) -> tuple[dict[int, dict[int, int]], dict[int, dict[int, int]]]:
        b_shares: dict[int, dict[int, int]] = {u: {} for u in self._contributors}
        s_shares: dict[int, dict[int, int]] = {v: {} for v in self._needs_s_key}
        for holder, reply in replies.items():
            for owner, data in reply.b_shares.items():
                b_shares[owner][holder] = shamir.decode_share(data)
            for owner, data in reply.s_shares.items():
                s_shares[owner][holder] = shamir.decode_share(data)
        return b_shares, s_shares

    def _remove_dropped_masks(self, s_keys: Mapping[int, bytes]) -> None:
        for v, raw in sorted(s_keys.items()):
            private = load_private_key(raw)
            for u in sorted(self._mask_sets[v] & self._contributors):
                seed = pairwise_seed(private, self._keys[u].masking, context=self.context)
                apply_mask(self._total, seed, sign=pairwise_sign(v, u), ring_bits=self.ring_bits)

    def _decode(self) -> AggregateResult:
        p, n = self.params, len(self._contributors)
        total = reduce(self._total, ring_bits=self.ring_bits)
        excluded = frozenset(self.rejections)
        if p.integer_ring_bits is not None:
            empty = np.zeros(0, dtype=np.float64)
            return AggregateResult(
                average=empty,
                weighted_sum=empty,
                total_weight=0.0,
                contributors=tuple(sorted(self._contributors)),
                dropped=tuple(sorted(frozenset(self.graph) - self._contributors - excluded)),
                excluded=tuple(sorted(excluded)),
                survivors_per_stage=tuple(self._counts),
                mean_error_bound=0.0,
                rejections=dict(self.rejections),
                ring_sum=total,
            )
        extra = total[self.vector_length + 1 :] if p.extra_length else None
        total = total[: self.vector_length + 1]
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
            dropped=tuple(sorted(frozenset(self.graph) - self._contributors - excluded)),
            excluded=tuple(sorted(excluded)),
            survivors_per_stage=tuple(self._counts),
            mean_error_bound=bound,
            rejections=dict(self.rejections),
            extra_sum=extra,
        )
