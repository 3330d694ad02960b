"""Which clients exist and which are sampled each round.

In simulation the server first asks every virtual node which partition it plays, so that
sampling is over partitions and the same seed gives the same run (Flower's node ids are
random). In deployment the clients are the connected SuperNodes, keyed by node id.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
from flwr.app import ConfigRecord, RecordDict
from flwr.serverapp import Grid

from fedsys.config import RunConfig, SamplingConfig
from fedsys.coordinator.messaging import exchange
from fedsys.errors import AbortedRoundError
from fedsys.wire import ACTION_IDENTIFY

log = logging.getLogger("fedsys")
_NODE_WAIT_SECONDS = 120.0


@dataclass
class Population:
    """Known clients: a stable key (partition id or node id) per connected node."""

    node_by_key: dict[str, int]

    def __post_init__(self) -> None:
        self._key_by_node = {node: key for key, node in self.node_by_key.items()}

    def key(self, node: int) -> str:
        """The stable key of ``node``."""
        return self._key_by_node.get(node, str(node))

    def available(self, exhausted: set[str]) -> list[str]:
        """Keys of clients that have not exhausted their budget, in a stable order."""
        return sorted((k for k in self.node_by_key if k not in exhausted), key=_order)

    def sample(self, available: list[str], sampling: SamplingConfig, rng: np.random.Generator) -> list[int]:
        """Node ids of this round's participants (deterministic given ``rng``)."""
        wanted = sampling.clients_per_round or max(
            sampling.min_clients, round(sampling.fraction * len(available))
        )
        size = min(wanted, len(available))
        chosen = rng.choice(len(available), size=size, replace=False)
        return [self.node_by_key[available[i]] for i in sorted(chosen)]


def _order(key: str) -> tuple[int, str]:
    return (int(key), key) if key.isdigit() else (0, key)


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
        return Population({str(n): n for n in nodes})
    nodes = wait_for_nodes(grid, config.simulation.num_clients)
    content = RecordDict({"config": ConfigRecord({"ask": "partition-id"})})
    started = time.perf_counter()
    ex = exchange(
        grid,
        {n: content for n in nodes},
        message_type=f"query.{ACTION_IDENTIFY}",
        timeout=config.sampling.round_timeout,
    )
    mapping = {
        str(r.content.config_records["identity"]["partition-id"]): node for node, r in ex.replies.items()
    }
    log.info("discovered %d virtual clients in %.1f s", len(mapping), time.perf_counter() - started)
    return Population(mapping)
