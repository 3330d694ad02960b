"""Sparse neighbour graphs and Shamir thresholds for SecAgg+ (Bell et al. CCS 2020, Sec. 3).

SecAgg+ replaces the complete graph of SecAgg by a random k-regular graph: a client masks only with its
k neighbours and Shamir-shares its secrets among them plus itself (k + 1 holders, as in Flower's SecAgg+
workflow, so a complete graph over n clients is exactly SecAgg's n holders).

Construction: a Harary-style circulant graph over a uniformly random ordering of the participants: the
client at position i is adjacent to positions i +- 1, ..., i +- k/2 (mod n). The ordering is drawn by
the server with ``secrets.SystemRandom``; the graph itself is public.

Defaults (a cost/robustness heuristic, not Bell et al.'s security-parameter bound): k = 2 * ceil(log2 n);
the complete graph is used whenever n - 1 <= 2k, where sparsity would save less than half the work.
Bell et al. (Thm. 3.6) derive k from the corruption fraction, dropout rate and statistical security;
deployments facing many corrupt clients should pass that k as ``degree``.

Threshold (semi-honest server): t = floor((k + 1) / 2) + 1 of the k + 1 holders. Requiring
t > (k + 1) / 2 means that a server that lies about who dropped cannot collect t shares of both b_u
and s_u for one client, because
every honest holder reveals at most one of the two (Bonawitz et al. 2017, Sec. 4). Each neighbourhood
tolerates k + 1 - t dropouts; raising t above the default trades dropout tolerance for a larger coalition
needed to reconstruct a secret.

Threshold (malicious server, :func:`malicious_threshold`): the complete graph (k + 1 = n holders) and
t = floor(n (1 + gamma) / 2) + 1 for an assumed fraction gamma of corrupt clients (default 1/3) among
the cohort. Derivation (the double-signing argument behind the ConsistencyCheck round of Bonawitz
et al. CCS 2017, Sec. 4): with n_C <= gamma n corrupt clients, two different survivor sets that each
carry t signatures from clients with the same view of the cohort need 2 (t - n_C) > n - n_C distinct
honest signers, so some honest client would have signed both, which it never does; hence
t > (n + n_C) / 2 suffices, and gamma = 1/3 gives t = floor(2n/3) + 1. This is the
t > (k + 1)(1 + gamma) / 2 form of Bell et al. CCS 2020's malicious-server condition with k = n - 1; on
the complete graph every neighbourhood holds exactly the cohort's n_C corrupt clients, so the
statistical failure probability of their random-graph analysis is 0. Sparse graphs are refused against
a malicious server: Bell et al.'s sparse variant needs a graph the server cannot bias, not built here.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping, Sequence

from fedsys.errors import ConfigError

NeighbourGraph = Mapping[int, frozenset[int]]


def default_degree(num_participants: int) -> int:
    """k = 2 * ceil(log2 n), or n - 1 (complete graph) when n - 1 <= 2k."""
    if num_participants < 2:
        raise ConfigError(f"secure aggregation needs at least 2 participants, got {num_participants}")
    degree = 2 * math.ceil(math.log2(num_participants))
    return num_participants - 1 if num_participants - 1 <= 2 * degree else degree


def default_threshold(num_holders: int) -> int:
    """Smallest honest-majority threshold floor(h / 2) + 1 for h share holders."""
    return num_holders // 2 + 1


DEFAULT_CORRUPTION_FRACTION = 1 / 3
"""gamma: assumed largest fraction of a cohort's clients that collude with a malicious server."""


def malicious_threshold(num_holders: int, *, corruption_fraction: float = DEFAULT_CORRUPTION_FRACTION) -> int:
    """Smallest t with t > n (1 + gamma) / 2 for n holders on the complete graph (see module doc).

    Raises:
        ConfigError: gamma outside [0, 1).
    """
    if not 0 <= corruption_fraction < 1:
        raise ConfigError(f"secagg corruption fraction must be in [0, 1), got {corruption_fraction}")
    return math.floor(num_holders * (1 + corruption_fraction) / 2) + 1


def check_threshold(threshold: int, *, num_holders: int) -> None:
    """Require num_holders / 2 < threshold <= num_holders.

    Raises:
        ConfigError: a threshold at or below half the holders would let a lying server recover both
            secrets of one client; above the holder count no secret could be reconstructed.
    """
    if not num_holders / 2 < threshold <= num_holders:
        raise ConfigError(
            f"secagg threshold must be in ({num_holders / 2:g}, {num_holders}] for {num_holders} holders, "
            f"got {threshold}"
        )


def build_neighbour_graph(
    participants: Sequence[int], *, degree: int | None = None
) -> dict[int, frozenset[int]]:
    """Random k-regular circulant graph over ``participants`` (complete when k >= n - 1).

    Args:
        participants: distinct participant ids.
        degree: k; even and >= 2 unless it makes the graph complete. ``None`` picks
            :func:`default_degree`.

    Returns:
        Mapping id -> frozenset of neighbour ids (symmetric, no self loops).

    Raises:
        ConfigError: duplicate ids, fewer than 2 participants, or an invalid degree.
    """
    ids = list(participants)
    if len(set(ids)) != len(ids):
        raise ConfigError(f"participant ids must be distinct, got {sorted(ids)}")
    n = len(ids)
    k = default_degree(n) if degree is None else degree
    if k >= n - 1:
        return {u: frozenset(v for v in ids if v != u) for u in ids}
    if k < 2 or k % 2:
        raise ConfigError(f"secagg degree must be even and >= 2 (or >= n - 1 = {n - 1}), got {k}")
    secrets.SystemRandom().shuffle(ids)
    return {
        ids[i]: frozenset(ids[(i + offset) % n] for offset in range(-(k // 2), k // 2 + 1) if offset)
        for i in range(n)
    }
