"""Small builders shared by the privacy tests (tiny models, data sets, settings)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

from fedsys.privacy import DPSettings, LocalBudget, PrivacyLedger, PrivateRoundResult, run_private_round

CPU = torch.device("cpu")


class ExplodingDataset(TensorDataset):
    """A data set whose examples must never be read."""

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        raise DataTouchedError(f"example {index} was read")


class DataTouchedError(RuntimeError):
    """Raised by :class:`ExplodingDataset`."""


def blobs(n: int = 64, features: int = 4, *, seed: int = 0, scale: float = 1.0) -> TensorDataset:
    """Two linearly separable Gaussian blobs, labels 0/1."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    centers = torch.where(labels[:, None] == 1, 2.0, -2.0).expand(n, features)
    x = scale * (centers + 0.5 * torch.randn(n, features, generator=gen))
    return TensorDataset(x, labels)


def tiny_mlp(features: int = 4, classes: int = 2, *, seed: int = 0) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(features, 8), nn.ReLU(), nn.Linear(8, classes))


def tiny_cnn(classes: int = 2, *, seed: int = 0) -> nn.Module:
    """1x6x6 images; Conv2d and GroupNorm have no ghost norm sampler (fallback path)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Conv2d(1, 4, kernel_size=3, padding=1),
            nn.GroupNorm(2, 4),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(4 * 6 * 6, classes),
        )


def open_ledger(tmp_path: Path) -> PrivacyLedger:
    return PrivacyLedger(tmp_path / "ledger.sqlite", create=True)


def private_round(
    ledger: PrivacyLedger,
    *,
    model: nn.Module | None = None,
    train_set: TensorDataset | None = None,
    dp: DPSettings | None = None,
    budget: LocalBudget | None = None,
    budget_key: str = "data-a",
    fingerprint: str = "fp-a",
    server_round: int = 1,
    batch_size: int = 8,
    local_steps: int | None = 5,
    local_epochs: int | None = None,
    seed: int | None = 0,
    lr: float = 0.1,
    proximal_mu: float = 0.0,
) -> PrivateRoundResult:
    """``run_private_round`` with small defaults; override only what a test is about."""
    return run_private_round(
        model=model if model is not None else tiny_mlp(),
        train_set=train_set if train_set is not None else blobs(),
        dp=dp or DPSettings(noise_multiplier=1.0, max_grad_norm=1.0),
        budget=budget or LocalBudget(max_epsilon=50.0, target_delta=1e-5),
        ledger=ledger,
        budget_key=budget_key,
        fingerprint=fingerprint,
        run_id="run-1",
        server_round=server_round,
        lr=lr,
        momentum=0.0,
        batch_size=batch_size,
        local_epochs=local_epochs,
        local_steps=local_steps,
        proximal_mu=proximal_mu,
        device=CPU,
        generator=None if seed is None else torch.Generator().manual_seed(seed),
    )


def oracle_rdp_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """Epsilon of ``steps`` Poisson-subsampled Gaussian steps by dp_accounting's RDP accountant, on
    Opacus' orders: an implementation independent of fedsys' (and of Opacus')."""
    import dp_accounting
    from dp_accounting import rdp
    from opacus.accountants.rdp import RDPAccountant

    event = dp_accounting.PoissonSampledDpEvent(sample_rate, dp_accounting.GaussianDpEvent(noise_multiplier))
    accountant = rdp.RdpAccountant(orders=RDPAccountant.DEFAULT_ALPHAS)
    accountant.compose(dp_accounting.SelfComposedDpEvent(event, steps))
    return float(accountant.get_epsilon(delta))
