"""Non-private local training and evaluation (DP-SGD lives in :mod:`fedsys.privacy`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from fedsys.data.dataset import ArrayDataset
from fedsys.metrics import classification_metrics


@dataclass(frozen=True)
class TrainStats:
    """What one local training pass did."""

    steps: int
    loss: float


def planned_steps(num_examples: int, *, batch_size: int, local_epochs: int, local_steps: int) -> int:
    """Optimiser steps for one round: ``local_steps`` if set, else epochs x batches."""
    if local_steps > 0:
        return local_steps
    return local_epochs * max(1, -(-num_examples // batch_size))


def proximal_step(model: nn.Module, global_params: list[torch.Tensor], *, lr: float, mu: float) -> None:
    """FedProx's proximal term as a decoupled step: ``w -= lr * mu * (w - w_global)``.

    It depends only on the weights, never on data, so it costs no privacy under DP-SGD.
    """
    if mu == 0:
        return
    with torch.no_grad():
        for param, anchor in zip(model.parameters(), global_params, strict=True):
            param.sub_(lr * mu * (param - anchor))


def train_plain(
    model: nn.Module,
    data: ArrayDataset,
    *,
    lr: float,
    momentum: float,
    batch_size: int,
    steps: int,
    proximal_mu: float,
    device: torch.device,
    generator: torch.Generator,
) -> TrainStats:
    """Mini-batch SGD for ``steps`` steps (cycling through shuffled epochs)."""
    model.to(device).train()
    anchor = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    criterion = nn.CrossEntropyLoss()
    loader = DataLoader(data.to_torch(), batch_size=batch_size, shuffle=True, generator=generator)
    done, total = 0, 0.0
    while done < steps:
        for xb, yb in loader:
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(model(xb.to(device)), yb.to(device))
            loss.backward()
            optimizer.step()
            proximal_step(model, anchor, lr=lr, mu=proximal_mu)
            total += float(loss.detach())
            done += 1
            if done == steps:
                break
    return TrainStats(steps=done, loss=total / max(done, 1))


@dataclass(frozen=True)
class Evaluation:
    """Loss and metrics of a model on a data set."""

    loss: float
    num_examples: int
    metrics: dict[str, float]


def evaluate(
    model: nn.Module, data: ArrayDataset, *, device: torch.device, batch_size: int = 2048
) -> Evaluation:
    """Mean cross-entropy and classification metrics of ``model`` on ``data``."""
    model.to(device).eval()
    losses, probs = [], []
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            xb = torch.from_numpy(data.x[start : start + batch_size]).to(device)
            yb = torch.from_numpy(data.y[start : start + batch_size]).to(device)
            logits = model(xb)
            losses.append(float(nn.functional.cross_entropy(logits, yb, reduction="sum")))
            probs.append(torch.softmax(logits, dim=1).cpu().numpy())
    probabilities = np.concatenate(probs) if probs else np.zeros((0, data.num_classes))
    return Evaluation(
        loss=sum(losses) / max(len(data), 1),
        num_examples=len(data),
        metrics=classification_metrics(data.y, probabilities),
    )


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from fedsys.errors import ConfigError

        raise ConfigError("device 'cuda' asked for, but torch sees no CUDA device")
    return torch.device(name)
