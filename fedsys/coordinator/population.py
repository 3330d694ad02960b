"""Which clients exist and which are sampled each round.

In simulation a client *is* a data partition: the server samples partition ids with its seeded
generator and tells each chosen virtual node which partition to play this round (the node only
lends its execution slot; Flower's node ids are random, so sampling by node would not be
reproducible). A partition's data, ledger and training randomness all key on its id, so a seed
fixes the run, and a client not sampled costs nothing. In deployment the clients are the
connected SuperNodes, keyed by node id, and each trains only on its own data.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
from flwr.serverapp import Grid

from fedsys.config import RunConfig, SamplingConfig
from fedsys.errors import AbortedRoundError

log = logging.getLogger("fedsys")
_NODE_WAIT_SECONDS = 120.0


@dataclass(frozen=True)
class Population:
    """Client keys (partition ids in simulation, node ids in deployment) and connected nodes."""

    keys: tuple[str, ...]
    nodes: tuple[int, ...]
    simulated: bool

    def available(self, exhausted: set[str]) -> list[str]:
        """Keys of clients that have not exhausted their budget, in a stable order."""
        return [k for k in self.keys if k not in exhausted]

    def sample(
        self, available: list[str], sampling: SamplingConfig, rng: np.random.Generator
    ) -> dict[int, str]:
        """This round's participants as ``{node id: client key}`` (deterministic given ``rng``)."""
        wanted = sampling.clients_per_round or max(
            sampling.min_clients, round(sampling.fraction * len(available))
        )
        size = min(wanted, len(available), len(self.nodes))
        chosen = [available[i] for i in sorted(rng.choice(len(available), size=size, replace=False))]
        if not self.simulated:
            return {int(key): key for key in chosen}
        return dict(zip(self.nodes, chosen, strict=False))


def wait_for_nodes(grid: Grid, expected: int, timeout: float = _NODE_WAIT_SECONDS) -> list[int]:
    """Block until ``expected`` nodes are connected (the engine may still be registering them)."""
    deadline = time.monotonic() + timeout
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= expected:
            return nodes
        if time.monotonic() > deadline:
            raise AbortedRoundError(
                f"only {len(nodes)} of {expected} expected node(s) connected after {timeout:.0f} s"
            )
        time.sleep(0.5)


def discover(grid: Grid, config: RunConfig, *, simulated: bool) -> Population:
    """Find the clients of this run."""
    if not simulated:
        nodes = wait_for_nodes(grid, config.sampling.min_clients)
        return Population(keys=tuple(str(n) for n in nodes), nodes=tuple(nodes), simulated=False)
    nodes = wait_for_nodes(grid, config.simulation.num_clients)
    keys = tuple(str(pid) for pid in range(config.simulation.num_clients))
    return Population(keys=keys, nodes=tuple(nodes), simulated=True)
