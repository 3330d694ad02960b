"""Canary clients for the client-level audit (Andrew et al., ICLR 2024, "One-shot empirical
privacy estimation for federated learning", Sec. 3).

A canary client does not train: its model update is a fixed secret direction ``u_i`` (a uniformly
random unit vector in model space, drawn independently per canary from the auditor's generator)
scaled to the clipping norm ``dp.max-grad-norm``. From there it takes exactly the path of every
other client-level holder (:func:`fedsys.node.distributed.distributed_update`): the ledger
reservation, clipping, rotation, conditional rounding, its Skellam noise share and SecAgg+.

The auditor designates m of the simulated partitions as canary slots and includes each canary
with probability 1/2, independently; an included slot plays its canary, an excluded one trains
on its partition like any other client (so the population has the same size either way). The
holders' file names only the *included* slots and their directions; the auditor keeps the full
set (directions and the secret inclusion bits) in its own file.

Simulation only: a holder reads the file through its own setting ``audit-client-canaries``
(passed by the harness, never the server's: a server-sent value is dropped like the budget keys),
and only a virtual client of the simulation engine consults it (see
:func:`fedsys.node.distributed.canary_update`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from fedsys.errors import ConfigError, DataError


@dataclass(frozen=True)
class ClientCanaries:
    """m canary clients: the partition each one plays, its secret direction and inclusion bit.

    Attributes:
        partitions: The simulated partition (client) of each canary, distinct, int64 ``(m,)``.
        directions: Unit vectors in model space, float64 ``(m, dim)``, flattened in ``names`` order.
        included: The secret inclusion bits (probability 1/2 each), bool ``(m,)``.
        names: The model's parameter names, in the order ``directions`` are flattened.
    """

    partitions: NDArray[np.int64]
    directions: NDArray[np.float64]
    included: NDArray[np.bool_]
    names: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.partitions.size)

    def save(self, path: Path, *, holders_only: bool = False) -> Path:
        """Write the set (``holders_only``: the included canaries only, without inclusion bits)."""
        keep = self.included if holders_only else np.ones(len(self), dtype=bool)
        fields: dict[str, np.ndarray] = {
            "partitions": self.partitions[keep],
            "directions": self.directions[keep],
            "names": np.array(self.names),
        }
        if not holders_only:
            fields["included"] = self.included
        np.savez(path, allow_pickle=False, **fields)
        return path


def make_client_canaries(
    *, count: int, names: list[str], dim: int, holders: int, rng: np.random.Generator
) -> ClientCanaries:
    """Draw ``count`` canary clients among ``holders`` partitions, their directions and inclusion bits.

    Raises:
        ConfigError: ``count`` is not in ``[2, holders]`` or ``dim`` < 1.
    """
    if not 2 <= count <= holders:
        raise ConfigError(
            f"--canaries must be in [2, {holders}] (one per simulated client at most) at client level, "
            f"got {count}"
        )
    if dim < 1:
        raise ConfigError(f"the model has no parameters to audit (dim {dim})")
    partitions = np.sort(rng.choice(holders, size=count, replace=False)).astype(np.int64)
    directions = rng.standard_normal((count, dim))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    included = rng.random(count) < 0.5
    return ClientCanaries(partitions, directions, included, tuple(names))


def canary_direction(path: Path, partition_id: int, names: list[str]) -> NDArray[np.float64] | None:
    """The unit direction this simulated partition plays as an included canary, or None.

    Raises:
        DataError: the file cannot be read, or was made for another model.
    """
    try:
        with np.load(path) as data:
            partitions, directions, stored = data["partitions"], data["directions"], data["names"]
    except (OSError, KeyError, ValueError) as err:
        raise DataError(f"cannot read audit client canaries {path}: {err}") from err
    if [str(n) for n in stored] != names:
        raise DataError(f"audit client canaries {path} were drawn for another model (parameter names differ)")
    hits = np.flatnonzero(partitions == partition_id)
    if hits.size == 0:
        return None
    return np.asarray(directions[hits[0]], dtype=np.float64)
