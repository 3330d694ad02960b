"""Throughput of non-private SGD vs Opacus DP-SGD (hooks, ghost) for the zoo's MLP, CNN, LSTM, transformer.

Usage: ``python benchmarks/dp_modes.py [--device cuda] [--steps 40] [--repeats 3] [--threads 2]
[--models mlp,cnn,lstm,transformer]``

All ratios come from one run, on one machine. DP modes run through
``fedsys.privacy.dpsgd.train_dp_sgd`` (Poisson sampling, expected batch 256), so the
numbers include everything a client pays per step. The sequence models read 128 byte-level
token ids (vocabulary 257). To try jemalloc::

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 \\
    MALLOC_CONF=dirty_decay_ms:-1,muzzy_decay_ms:-1 python benchmarks/dp_modes.py

Sequence models, measured 2026-11-30 (``--threads 1 --steps 10 --repeats 2``, CPU, a shared
2-core machine under load, so absolute rates are low; samples/s, DP slowdown in brackets):

    model        params  non-private       hooks         ghost        auto picks
    lstm         33,962        1,103    189 (5.8x)    164 (6.7x)      hooks
    transformer  84,170          240    187 (1.3x)     69 (3.5x)      hooks

DPLSTM is a Python loop of ``RNNLinear`` cells whose per-sample gradients are summed over all
128 time steps, hence its large slowdown; the transformer's cost is mostly attention, which
has no weights, so DP adds little. Ghost clipping is slower for both (LayerNorm and
``RNNLinear`` have no norm sampler, and ghost pays a second backward pass), so ``auto``'s
rule (ghost only when every trainable layer is ``Linear``/``Embedding``) picks hooks for both.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedsys.data.text import BYTE_VOCAB_SIZE
from fedsys.models.sequence import lstm, transformer
from fedsys.models.zoo import SmallCNN, mlp
from fedsys.privacy.dpsgd import choose_grad_sample_mode, train_dp_sgd

BATCH = 256
BATCHES_PER_EPOCH = 20
SEQUENCE_LENGTH = 128


def _data(shape: tuple[int, ...], seed: int, *, tokens: bool = False) -> TensorDataset:
    gen = torch.Generator().manual_seed(seed)
    n = BATCH * BATCHES_PER_EPOCH
    if tokens:  # byte ids 1..256 (0 is padding), as fedsys.data.text encodes them
        x = torch.randint(1, BYTE_VOCAB_SIZE, (n, *shape), generator=gen).float()
    else:
        x = torch.randn(n, *shape, generator=gen)
    return TensorDataset(x, torch.randint(0, 10, (n,), generator=gen))


def _non_private(model: nn.Module, data: TensorDataset, steps: int, device: torch.device) -> None:
    model = model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    criterion = nn.CrossEntropyLoss()
    loader = DataLoader(data, batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(0))
    done = 0
    while done < steps:
        for x, y in loader:
            optimizer.zero_grad(set_to_none=True)
            criterion(model(x.to(device)), y.to(device)).backward()
            optimizer.step()
            done += 1
            if done == steps:
                break
    if device.type == "cuda":
        torch.cuda.synchronize()


def _private(mode: str) -> Callable[[nn.Module, TensorDataset, int, torch.device], None]:
    def run(model: nn.Module, data: TensorDataset, steps: int, device: torch.device) -> None:
        train_dp_sgd(
            model=model,
            train_set=data,
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            batch_size=BATCH,
            steps=steps,
            lr=0.01,
            momentum=0.0,
            proximal_mu=0.0,
            grad_sample_mode="hooks" if mode == "hooks" else "ghost",
            accountant="rdp",
            prior_history=[],
            device=device,
            generator=torch.Generator().manual_seed(0),
        )
        if device.type == "cuda":
            torch.cuda.synchronize()

    return run


def _samples_per_second(
    runner: Callable[[nn.Module, TensorDataset, int, torch.device], None],
    build: Callable[[], nn.Module],
    data: TensorDataset,
    args: argparse.Namespace,
) -> float:
    device = torch.device(args.device)
    runner(build(), data, 3, device)  # warm-up: allocator, kernels, lazy imports
    rates = []
    for _ in range(args.repeats):
        model = build()
        start = time.perf_counter()
        runner(model, data, args.steps, device)
        rates.append(args.steps * BATCH / (time.perf_counter() - start))
    return float(statistics.median(rates))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--models", default="mlp,cnn,lstm,transformer", help="comma-separated subset")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda requested but CUDA is not available")
    text = (SEQUENCE_LENGTH,)
    models: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
        "mlp": (lambda: mlp((64,), 10, hidden=256), (64,)),
        "cnn": (lambda: SmallCNN((1, 28, 28), 10), (1, 28, 28)),
        "lstm": (lambda: lstm(text, 10), text),
        "transformer": (lambda: transformer(text, 10), text),
    }
    print(f"device={args.device} threads={torch.get_num_threads()} batch={BATCH} steps={args.steps}")
    print(f"LD_PRELOAD={os.environ.get('LD_PRELOAD', '')!r}")
    print(f"{'model':<12}{'params':>9}{'mode':>14}{'samples/s':>12}{'slowdown':>10}")
    for name, (build, shape) in ((n, models[n]) for n in args.models.split(",")):
        data = _data(shape, seed=0, tokens=shape == text)
        params = sum(p.numel() for p in build().parameters())
        base = _samples_per_second(_non_private, build, data, args)
        print(f"{name:<12}{params:>9}{'non-private':>14}{base:>12.0f}{1.0:>10.1f}")
        for mode in ("hooks", "ghost"):
            rate = _samples_per_second(_private(mode), build, data, args)
            print(f"{name:<12}{params:>9}{mode:>14}{rate:>12.0f}{base / rate:>10.1f}")
        auto = choose_grad_sample_mode(build(), "auto", torch.device(args.device))
        print(f"{name:<12}{'':>9}{'auto picks':>14}{auto:>12}")


if __name__ == "__main__":
    main()
