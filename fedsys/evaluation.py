"""Federated evaluation: a holder's evaluation sums of the global model, and their integer layout
inside a SecAgg+ vector.

Each holder scores the model it was sent on its own held-out split and releases only sums: correct
predictions, examples, the loss sum (each example's cross-entropy clipped to the public
``evaluation.loss-bound`` L) and the C x C confusion counts. Under SecAgg+ the sums travel as
integer coordinates after the quantised update (same ring, same masks), so the server learns only
the cohort's totals. At most ``secagg.max-weight`` (W) held-out examples per holder are scored, which
bounds every coordinate: the ring must hold ``n * W * max(1, L * LOSS_SCALE)`` without wrapping
(:func:`section_ring_bits`).

Optional DP (``evaluation.noise-multiplier`` z > 0): with the loss measured in units of L, adding
or removing one held-out record changes correct by at most 1, examples by 1, the loss by at most 1
and one confusion cell by 1 (with the W cap, a record pushed out changes correct by 1, the loss by
at most 1 and two cells by 1), so the sums' L2 sensitivity is 2 (:func:`evaluation_sensitivity`).
Each holder adds N(0, (2z)^2) to every count and N(0, (2zL)^2) nats to its loss sum: the Gaussian
mechanism, charged to its ledger as one release of multiplier z at sampling rate 1. A noisy sum is
no longer checked for consistency, only for finiteness.

Section layout (``3 + C * C`` coordinates): ``[correct, examples, round(LOSS_SCALE * loss), confusion
row-major]``, each a signed integer in two's complement mod 2^k (signed so that DP noise could be
added; the sums themselves are non-negative).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from fedsys.data.dataset import ArrayDataset
from fedsys.errors import ConfigError, ProtocolError
from fedsys.metrics import macro_f1, per_class_recall

LOSS_SCALE = 1024
"""Fixed point of the loss coordinate: one unit is 1/1024 nat of one example's clipped loss."""
_HEADER = 3  # correct, examples, loss
_MAX_RING_BITS = 62


@dataclass(frozen=True)
class EvaluationSums:
    """One holder's (or a cohort's) evaluation sums; ``loss`` in nats, ``confusion`` rows true classes."""

    correct: int
    examples: int
    loss: float
    confusion: NDArray[np.int64]

    def __add__(self, other: EvaluationSums) -> EvaluationSums:
        return EvaluationSums(
            self.correct + other.correct,
            self.examples + other.examples,
            self.loss + other.loss,
            self.confusion + other.confusion,
        )

    def to_metrics(self) -> dict[str, int | float | list[int]]:
        """The sums as a plaintext reply's metrics (``eval-sum-*``)."""
        return {
            "eval-sum-correct": self.correct,
            "eval-sum-examples": self.examples,
            "eval-sum-loss": self.loss,
            "eval-sum-confusion": [int(v) for v in self.confusion.ravel()],
        }

    def summary(self) -> dict[str, float]:
        """``federated-accuracy``, ``-loss``, ``-examples``, ``-macro-f1`` and ``-recall-<k>``."""
        n = max(self.examples, 1)
        out = {
            "federated-accuracy": min(max(self.correct / n, 0.0), 1.0),  # noisy sums may stray
            "federated-loss": self.loss / n,
            "federated-examples": float(self.examples),
            "federated-macro-f1": macro_f1(np.clip(self.confusion, 0, None)),
        }
        recall = per_class_recall(np.clip(self.confusion, 0, None))
        out.update({f"federated-recall-{k}": float(r) for k, r in enumerate(recall)})
        return out


def empty_sums(num_classes: int) -> EvaluationSums:
    """Sums of no examples (what a holder that keeps its evaluation private contributes)."""
    return EvaluationSums(0, 0, 0.0, np.zeros((num_classes, num_classes), dtype=np.int64))


def evaluation_sums(
    model: nn.Module,
    data: ArrayDataset,
    *,
    device: torch.device,
    loss_bound: float,
    max_examples: int,
    batch_size: int = 2048,
) -> EvaluationSums:
    """Score ``model`` on the first ``max_examples`` records of ``data``.

    Each example's cross-entropy is clipped to ``loss_bound`` and rounded to the fixed point
    (1/``LOSS_SCALE``), so one record moves the loss sum by at most ``loss_bound``.
    """
    scored = data.subset(np.arange(min(len(data), max_examples)))
    c = data.num_classes
    matrix = np.zeros((c, c), dtype=np.int64)
    loss_units = 0
    model.to(device).eval()
    with torch.no_grad():
        for start in range(0, len(scored), batch_size):
            xb = torch.from_numpy(scored.x[start : start + batch_size]).to(device)
            yb = torch.from_numpy(scored.y[start : start + batch_size]).to(device)
            logits = model(xb)
            losses = nn.functional.cross_entropy(logits, yb, reduction="none").clamp(max=loss_bound)
            loss_units += int(torch.round(losses.double() * LOSS_SCALE).sum().item())
            np.add.at(matrix, (yb.cpu().numpy(), logits.argmax(1).cpu().numpy()), 1)
    return EvaluationSums(int(np.trace(matrix)), len(scored), loss_units / LOSS_SCALE, matrix)


def evaluation_sensitivity() -> float:
    """L2 sensitivity of one holder's sums to one held-out record, loss in units of L: 2."""
    return 2.0


def add_noise(
    sums: EvaluationSums, *, noise_multiplier: float, loss_bound: float, rng: np.random.Generator
) -> EvaluationSums:
    """The Gaussian mechanism on ``sums``: N(0, (2z)^2) per count, N(0, (2zL)^2) on the loss sum;
    counts are rounded to integers afterwards (post-processing)."""
    std = noise_multiplier * evaluation_sensitivity()
    noise = rng.normal(0.0, std, size=_HEADER + sums.confusion.size)
    noise[2] *= loss_bound
    counts = np.rint(np.array([sums.correct, sums.examples]) + noise[:2]).astype(np.int64)
    cells = np.rint(sums.confusion.ravel() + noise[_HEADER:]).astype(np.int64)
    return EvaluationSums(
        int(counts[0]), int(counts[1]), sums.loss + float(noise[2]), cells.reshape(sums.confusion.shape)
    )


def section_length(num_classes: int) -> int:
    """Coordinates of the evaluation section for ``num_classes`` classes."""
    return _HEADER + num_classes * num_classes


def section_ring_bits(
    *, num_clients: int, max_examples: float, loss_bound: float, noise_multiplier: float = 0.0
) -> int:
    """Smallest ring exponent k in which the signed sum of ``num_clients`` sections cannot wrap.

    The largest coordinate of one holder is ``W * max(1, L * LOSS_SCALE)``, plus 10 standard
    deviations of its DP noise (in fixed point) when ``noise_multiplier`` > 0; a sum of n of them
    must stay below 2^(k-1) (the top bit is the sign).

    Raises:
        ConfigError: that needs more than 62 bits.
    """
    per_client = math.floor(max_examples) * max(1, math.ceil(loss_bound * LOSS_SCALE))
    per_client += math.ceil(
        10 * noise_multiplier * evaluation_sensitivity() * max(1.0, loss_bound) * LOSS_SCALE
    )
    bits = (num_clients * per_client).bit_length() + 1
    if bits > _MAX_RING_BITS:
        raise ConfigError(
            f"federated evaluation of {num_clients} clients with secagg.max-weight {max_examples} and "
            f"evaluation.loss-bound {loss_bound} needs a {bits}-bit ring (> {_MAX_RING_BITS}); "
            "lower either, or set evaluation.federated = false"
        )
    return bits


def encode_section(sums: EvaluationSums, *, ring_bits: int) -> NDArray[np.uint64]:
    """The sums as integers mod 2^ring_bits (two's complement), in the section layout."""
    values = [sums.correct, sums.examples, round(sums.loss * LOSS_SCALE), *sums.confusion.ravel().tolist()]
    modulus = 1 << ring_bits
    return np.array([int(v) % modulus for v in values], dtype=np.uint64)


def decode_section(ring_sum: NDArray[np.uint64], *, ring_bits: int, num_classes: int) -> EvaluationSums:
    """The cohort's sums from the ring sum of their sections (centred: values >= 2^(k-1) are negative).

    Raises:
        ProtocolError: the section has the wrong length.
    """
    if ring_sum.shape != (section_length(num_classes),):
        raise ProtocolError(
            f"evaluation section must have {section_length(num_classes)} coordinates, got {ring_sum.shape}"
        )
    half, modulus = 1 << (ring_bits - 1), 1 << ring_bits
    signed = [int(v) - modulus if int(v) >= half else int(v) for v in ring_sum.tolist()]
    return EvaluationSums(
        signed[0],
        signed[1],
        signed[2] / LOSS_SCALE,
        np.array(signed[_HEADER:], dtype=np.int64).reshape(num_classes, num_classes),
    )


def check_sums(
    sums: EvaluationSums, *, loss_bound: float, max_examples: float | None = None, noisy: bool = False
) -> None:
    """Reject sums no honest cohort could produce (a wrapped ring, a lying holder).

    With ``noisy`` (DP noise added) only finiteness is checked: noisy counts need not be consistent.

    Raises:
        ProtocolError: counts negative or over ``max_examples``, correct predictions not the
            confusion trace, the confusion total not the example count, or a loss outside [0, L * n].
    """
    n = sums.examples
    problem = ""
    if noisy:
        if not math.isfinite(sums.loss):
            raise ProtocolError(f"inconsistent evaluation sums: loss sum {sums.loss}")
        return
    if n < 0 or (max_examples is not None and n > max_examples):
        problem = f"{n} examples"
    elif int(sums.confusion.min(initial=0)) < 0 or int(sums.confusion.sum()) != n:
        problem = f"confusion counts total {int(sums.confusion.sum())} for {n} examples"
    elif sums.correct != int(np.trace(sums.confusion)):
        problem = f"{sums.correct} correct but a confusion trace of {int(np.trace(sums.confusion))}"
    elif not (math.isfinite(sums.loss) and 0 <= sums.loss <= loss_bound * n + 1e-9):
        problem = f"loss sum {sums.loss} outside [0, {loss_bound} x {n}]"
    if problem:
        raise ProtocolError(f"inconsistent evaluation sums: {problem}")


def sums_from_metrics(
    metrics: Mapping[str, object],
    *,
    num_classes: int,
    loss_bound: float,
    max_examples: float,
    noisy: bool = False,
) -> EvaluationSums | None:
    """Parse a plaintext reply's ``eval-sum-*`` metrics; None when it carries none.

    Raises:
        ProtocolError: present but malformed or inconsistent.
    """
    keys = ("eval-sum-correct", "eval-sum-examples", "eval-sum-loss", "eval-sum-confusion")
    if not any(k in metrics for k in keys):
        return None
    try:
        correct, examples = _whole(metrics["eval-sum-correct"]), _whole(metrics["eval-sum-examples"])
        loss = metrics["eval-sum-loss"]
        cells = metrics["eval-sum-confusion"]
        if isinstance(loss, bool) or not isinstance(loss, (int, float)) or not isinstance(cells, list):
            raise ProtocolError("eval-sum-loss must be a number and eval-sum-confusion a list")
        if len(cells) != num_classes * num_classes:
            raise ProtocolError(
                f"eval-sum-confusion needs {num_classes * num_classes} counts, got {len(cells)}"
            )
        matrix = np.array([_whole(v) for v in cells], dtype=np.int64).reshape(num_classes, num_classes)
    except KeyError as err:
        raise ProtocolError(f"evaluation sums lack {err}") from err
    sums = EvaluationSums(correct, examples, float(loss), matrix)
    check_sums(sums, loss_bound=loss_bound, max_examples=max_examples, noisy=noisy)
    return sums


def _whole(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
        raise ProtocolError(f"evaluation counts must be whole numbers, got {value!r}")
    if abs(value) > 2**53:
        raise ProtocolError(f"evaluation count out of range: {value!r}")
    return int(value)
