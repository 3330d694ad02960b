"""Per-example gradients for one DP-FedSGD step (``dp.mode = "distributed"``).

In distributed mode a holder does not train locally: each round it Poisson-samples its records
(each independently with probability ``q``) and computes every sampled record's gradient at the
*global* weights. Clipping, scaling, rotation, rounding and its noise share are applied by
:mod:`fedsys.secagg.ddp`; the server's secure sum is then exactly one step of central DP-SGD
over the union of the holders' records (Abadi et al., CCS 2016, Alg. 1, with the noise added
in shares).

Per-example gradients come from Opacus' ``GradSampleModule`` (hooks mode), the engine
``make_private`` uses, so every model the local mode trains works here too.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
from numpy.typing import NDArray
from opacus import GradSampleModule
from torch import nn

from fedsys.errors import ModelError

# torch warns when Opacus' full backward hooks fire on a first layer whose input does not
# require grad (always true for data); the per-sample gradients are still exact.
_FULL_HOOK_WARNING = "Full backward hook is firing when gradients are computed with respect to module outputs"


def poisson_sample(num_examples: int, sample_rate: float, generator: torch.Generator) -> torch.Tensor:
    """Indices of the records in this step's batch: each one independently with ``sample_rate``."""
    if not 0 < sample_rate <= 1:
        raise ValueError(f"sample rate must be in (0, 1], got {sample_rate}")
    keep = torch.rand(num_examples, generator=generator) < sample_rate
    return torch.nonzero(keep).flatten()


def per_example_gradients(
    model: nn.Module,
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    order: Sequence[str],
    sizes: Sequence[int],
) -> NDArray[np.float64]:
    """Gradients of each example's cross-entropy loss at the model's weights, unclipped.

    Args:
        model: The model at the global weights (not modified: a wrapper computes the gradients).
        features: The sampled examples (possibly none).
        labels: Their labels.
        order: The weight names in the order of the flattened update vector.
        sizes: Their sizes; a name that is not a trainable parameter (a buffer) gets zeros.

    Returns:
        A ``(batch, sum(sizes))`` float64 array, one row per example, in ``order``.

    Raises:
        ModelError: a parameter's gradient is missing or not finite.
    """
    total = int(sum(sizes))
    if len(features) == 0:
        return np.zeros((0, total), dtype=np.float64)
    wrapped = GradSampleModule(model, batch_first=True, loss_reduction="sum", force_functorch=False)
    try:
        wrapped.zero_grad(set_to_none=True)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_FULL_HOOK_WARNING, category=UserWarning)
            loss = nn.functional.cross_entropy(wrapped(features), labels, reduction="sum")
            loss.backward()  # type: ignore[no-untyped-call]
        params = dict(model.named_parameters())
        rows = np.zeros((len(features), total), dtype=np.float64)
        offset = 0
        for name, size in zip(order, sizes, strict=True):
            param = params.get(name)
            if param is not None and param.requires_grad:
                sample = getattr(param, "grad_sample", None)
                if sample is None:
                    raise ModelError(f"no per-example gradient for parameter {name!r}")
                block = sample.detach().reshape(len(features), -1).to(torch.float64).cpu().numpy()
                if block.shape[1] != size:
                    raise ModelError(
                        f"per-example gradient of {name!r} has {block.shape[1]} values, expected {size}"
                    )
                rows[:, offset : offset + size] = block
            offset += size
    finally:
        wrapped._close()
    if not np.isfinite(rows).all():
        raise ModelError("per-example gradients contain NaN or infinite values")
    return rows
