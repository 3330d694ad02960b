"""Canary scores from released models, and the noise-replaying server."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fedsys.audit.attacks import canary_gradients, gradient_alignment, replayed_noise, step_likelihood
from fedsys.audit.canaries import CanarySet
from fedsys.models import to_arrays
from fedsys.privacy import dpsgd


def _canaries(m: int = 6, d: int = 8) -> CanarySet:
    x = np.zeros((m, d), dtype=np.float32)
    x[np.arange(m), np.arange(m)] = 3.0
    return CanarySet(
        x=x,
        y=(np.arange(m) % 3).astype(np.int64),
        feature=np.arange(m),
        included=np.zeros(m, dtype=bool),
        holder=np.zeros(m, dtype=np.int64),
        amplitude=3.0,
    )


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 3))


def test_canary_gradients_match_autograd() -> None:
    model, canaries = _model(), _canaries()

    got = canary_gradients(model, to_arrays(model), canaries)

    for i in range(len(canaries)):
        model.zero_grad()
        loss = nn.functional.cross_entropy(
            model(torch.from_numpy(canaries.x[i : i + 1])), torch.tensor([canaries.y[i]])
        )
        loss.backward()
        expected = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        torch.testing.assert_close(got[i], expected)


def test_a_step_along_one_canary_scores_it_highest() -> None:
    model, canaries = _model(), _canaries()
    start = to_arrays(model)
    g = canary_gradients(model, start, canaries)[2]
    moved = {
        "0.weight": start["0.weight"] - 0.5 * g[:24].reshape(3, 8).numpy(),
        "0.bias": start["0.bias"] - 0.5 * g[24:].numpy(),
    }

    total = gradient_alignment(model, [start, moved], canaries)
    peak = gradient_alignment(model, [start, moved, moved], canaries, peak=True)

    assert int(np.argmax(total)) == 2
    assert total[2] == pytest.approx(0.5 * float(g.norm()), rel=1e-5)
    assert int(np.argmax(peak)) == 2


def test_replayed_noise_is_the_noise_opacus_added() -> None:
    # Clip every gradient to ~0 and scale the noise up, so one DP-SGD step moves the weights by
    # the noise alone: delta = -(lr / B) * N.
    model = _model()
    data = torch.utils.data.TensorDataset(torch.randn(64, 8), torch.randint(0, 3, (64,)))
    seed = torch.Generator().manual_seed(123)
    trained = dpsgd.train_dp_sgd(
        model=model,
        train_set=data,
        noise_multiplier=1e9,
        max_grad_norm=1e-9,
        batch_size=16,
        steps=1,
        lr=1.0,
        momentum=0.0,
        proximal_mu=0.0,
        grad_sample_mode="hooks",
        accountant="rdp",
        prior_history=[],
        device=torch.device("cpu"),
        generator=seed,
    )
    step = torch.cat([(trained.state_dict[k] - v).reshape(-1) for k, v in model.state_dict().items()])
    _, noise_generator = dpsgd._split_generator(torch.Generator().manual_seed(123), torch.device("cpu"))

    noise = replayed_noise(model, noise_generator, steps=1, noise_multiplier=1e9, max_grad_norm=1e-9)

    torch.testing.assert_close(step, -noise / 16, rtol=1e-4, atol=1e-6)


def test_step_likelihood_is_the_subsampled_gaussian_ratio() -> None:
    per_step = torch.tensor([[0.2, 3.0], [1.1, -0.4]], dtype=torch.float64) * 0.5  # unit 0.5
    q, sigma = 0.1, 0.8

    got = step_likelihood(per_step, unit=0.5, sample_rate=q, noise_multiplier=sigma)

    x = per_step.numpy() / 0.5
    expected = np.log(1 - q + q * np.exp((x - 0.5) / sigma**2)).sum(axis=0)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
