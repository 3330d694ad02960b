"""How many concurrent DP clients one GPU sustains: client-update throughput per process count.

Usage::

    python benchmarks/gpu_clients.py [--device cuda] [--procs 1,2,4,8,16] [--updates 20]
        [--workloads mlp-synthetic,cnn-digits] [--threads 1]

K worker processes (multiprocessing ``spawn``, no Ray) each run M client updates through
fedsys' own client code path, :func:`fedsys.node.update.compute_update` (local evaluation,
DP-SGD with the ledger's reserve/commit, or plain SGD), on one device. For each K the
workers start their timed loops together (a barrier, after one untimed warm-up update per
workload) and the aggregate rate is ``all updates / (last end - first start)``.

Workloads (both need no download and no ``flwr-datasets``):

- ``mlp-synthetic``: the MLP on ``synthetic:0.5,0.5`` simulated clients (the scenario's own
  per-device sizes, 50..1,000 examples; each update is a different client).
- ``cnn-digits``: the GroupNorm CNN on scikit-learn's digits, split into five data-holder
  files (NPZ) read through the deployment path (``HolderSettings(data_path=...)``).

Each workload runs with DP on and off in the same worker processes, so the DP/non-DP
ratio comes from one run. Reported per (workload, K, DP): client updates/s, training
samples/s (expected examples per update: ``steps x batch`` with Poisson sampling under DP,
``epochs x n`` without), and GPU memory: the largest ``torch.cuda.max_memory_allocated`` of
one process (tensors only) and the device's used memory (``cudaMemGetInfo``) divided by K
while all K processes are alive (with each process' CUDA context).

The privacy budget is set too large to bind (``max_epsilon=1e6``); ledgers live in a
temporary folder.
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing as mp
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WORKLOADS = ("mlp-synthetic", "cnn-digits")
DIGITS_HOLDERS = 5
_SYNTHETIC_POPULATION = 1_000_000_000
_MB = 1024 * 1024


@dataclass(frozen=True)
class Phase:
    """One timed loop: a workload with DP on or off."""

    workload: str
    dp: bool


@dataclass(frozen=True)
class PhaseResult:
    """What one worker measured in one phase."""

    workload: str
    dp: bool
    updates: int
    samples: float
    start: float
    end: float
    max_allocated_mb: float
    device_used_mb: float


def _config(workload: str, dp: bool, args: argparse.Namespace) -> Any:
    from fedsys.config import RunConfig

    if workload == "mlp-synthetic":
        base: dict[str, Any] = {"dataset": "synthetic:0.5,0.5", "model": "mlp", "partition": "natural"}
    elif workload == "cnn-digits":
        base = {"dataset": "digits", "model": "cnn"}
    else:
        raise SystemExit(f"unknown workload {workload!r} (known: {', '.join(WORKLOADS)})")
    return RunConfig.from_mapping(
        {
            **base,
            "train": {
                "lr": args.lr,
                "batch-size": args.batch_size,
                "local-epochs": args.local_epochs,
                "local-steps": args.local_steps,
            },
            "dp": {"enabled": dp, "noise-multiplier": 1.0, "max-grad-norm": 1.0},
        }
    )


def _settings(workload: str, worker: int, update: int, args: argparse.Namespace, scratch: Path) -> Any:
    from fedsys.config import BudgetConfig
    from fedsys.node.settings import HolderSettings

    budget = BudgetConfig(max_epsilon=1e6, target_delta=1e-5)
    ledger = scratch / "ledgers" / f"{workload}-worker{worker:03d}.sqlite"
    if workload == "mlp-synthetic":
        return HolderSettings(
            budget=budget,
            ledger_path=ledger,
            device=args.device,
            partition_id=worker * 100_000 + update,  # every update is another client
            num_partitions=_SYNTHETIC_POPULATION,
        )
    return HolderSettings(
        budget=budget,
        ledger_path=ledger,
        device=args.device,
        data_path=scratch / f"digits-{(worker + update) % DIGITS_HOLDERS}.npz",
        num_classes=10,
    )


def write_digits_holders(scratch: Path, seed: int = 0) -> None:
    """Split scikit-learn's digits into ``DIGITS_HOLDERS`` NPZ files (N x 8 x 8 images)."""
    import numpy as np

    from fedsys.data.builtin import load_digits

    data = load_digits()
    order = np.random.default_rng(seed).permutation(len(data))
    for i, idx in enumerate(np.array_split(order, DIGITS_HOLDERS)):
        np.savez(scratch / f"digits-{i}.npz", x=data.x[idx, 0], y=data.y[idx])


def _expected_samples(update: Any, config: Any) -> float:
    steps = update.metrics.get("steps", 0.0)
    if config.dp.enabled or config.train.local_steps:
        return float(steps) * config.train.batch_size
    return float(update.num_examples * config.train.local_epochs)


def _one_update(
    phase: Phase,
    phase_no: int,
    worker: int,
    update_no: int,
    *,
    config: Any,
    global_arrays: Any,
    args: argparse.Namespace,
    root: Path,
) -> float:
    from fedsys.node.update import compute_update

    update = compute_update(
        config,
        _settings(phase.workload, worker, update_no, args, root),
        global_arrays,
        server_round=phase_no * 100_000 + update_no + 1,
        run_id=f"bench-{worker}",
    )
    if update.status != "ok":
        raise RuntimeError(f"update refused: {update.reason}")
    return _expected_samples(update, config)


def _worker(
    worker: int, phases: list[Phase], args: argparse.Namespace, scratch: str, barrier: Any, queue: Any
) -> None:
    import torch

    torch.set_num_threads(args.threads)
    from fedsys.models import build_model, to_arrays

    cuda = args.device == "cuda"
    root = Path(scratch)
    results: list[PhaseResult] = []
    try:
        for phase_no, phase in enumerate(phases):
            config = _config(phase.workload, phase.dp, args)
            feature_shape = (60,) if phase.workload == "mlp-synthetic" else (1, 8, 8)
            torch.manual_seed(0)
            global_arrays = to_arrays(build_model(config.model, feature_shape, 10))

            one = functools.partial(
                _one_update,
                phase,
                phase_no,
                worker,
                config=config,
                global_arrays=global_arrays,
                args=args,
                root=root,
            )

            one(args.updates)  # warm-up: CUDA context, kernels, caches (not timed)
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            barrier.wait()
            start = time.perf_counter()
            samples = sum(one(u) for u in range(args.updates))
            if cuda:
                torch.cuda.synchronize()
            end = time.perf_counter()
            peak = torch.cuda.max_memory_allocated() / _MB if cuda else 0.0
            barrier.wait()  # all K processes alive and done: read the device's memory use
            used = 0.0
            if cuda:
                free, total = torch.cuda.mem_get_info()
                used = (total - free) / _MB
            barrier.wait()
            results.append(
                PhaseResult(phase.workload, phase.dp, args.updates, samples, start, end, peak, used)
            )
        queue.put((worker, results, ""))
    except BaseException as err:  # report, and let the others' barrier break
        barrier.abort()
        queue.put((worker, results, f"{type(err).__name__}: {err}"))


def run_k(k: int, phases: list[Phase], args: argparse.Namespace, scratch: Path) -> list[list[PhaseResult]]:
    """Run ``k`` workers over all phases; return each worker's results."""
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(k)
    queue = ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(i, phases, args, str(scratch), barrier, queue)) for i in range(k)
    ]
    for proc in procs:
        proc.start()
    out: list[list[PhaseResult]] = []
    errors = []
    for _ in procs:
        _, results, error = queue.get()
        out.append(results)
        if error:
            errors.append(error)
    for proc in procs:
        proc.join()
    if errors:
        raise SystemExit(f"K={k}: worker failed: {errors[0]}")
    return out


def summarize(k: int, phases: list[Phase], per_worker: list[list[PhaseResult]]) -> list[dict[str, Any]]:
    """Aggregate the workers' phase results into one row per phase."""
    rows = []
    for i, phase in enumerate(phases):
        results = [w[i] for w in per_worker]
        wall = max(r.end for r in results) - min(r.start for r in results)
        updates = sum(r.updates for r in results)
        rows.append(
            {
                "workload": phase.workload,
                "dp": phase.dp,
                "k": k,
                "updates_s": updates / wall,
                "samples_s": sum(r.samples for r in results) / wall,
                "s_per_update": sum(r.end - r.start for r in results) / updates,
                "alloc_mb": max(r.max_allocated_mb for r in results),
                "used_mb_per_proc": max(r.device_used_mb for r in results) / k,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    parser.add_argument("--procs", default="1,2,4,8,16", help="comma-separated process counts K")
    parser.add_argument("--updates", type=int, default=20, help="timed client updates per process")
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per process")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--local-steps", type=int, default=0, help="0 = local-epochs")
    parser.add_argument("--lr", type=float, default=0.05)
    args = parser.parse_args()
    workloads = [w for w in args.workloads.split(",") if w]
    phases = [Phase(w, dp) for w in workloads for dp in (True, False)]
    ks = [int(k) for k in args.procs.split(",") if k]

    import torch

    device_name = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu x{os.cpu_count()}"
    print(
        f"device={device_name} torch={torch.__version__} updates/proc={args.updates} "
        f"batch={args.batch_size} epochs={args.local_epochs} steps={args.local_steps} "
        f"threads/proc={args.threads}",
        flush=True,
    )
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="gpu-clients-") as tmp:
        scratch = Path(tmp)
        if "cnn-digits" in workloads:
            write_digits_holders(scratch)
        for k in ks:
            t0 = time.perf_counter()
            new = summarize(k, phases, run_k(k, phases, args, scratch))
            rows += new
            for row in new:
                _print_row(row)
            print(f"# K={k} took {time.perf_counter() - t0:.1f} s (spawn and warm-up included)", flush=True)
    _print_table(rows, workloads, ks)


def _print_row(row: dict[str, Any]) -> None:
    print(
        f"{row['workload']:>14} K={row['k']:<3} dp={'on ' if row['dp'] else 'off'} "
        f"{row['updates_s']:8.1f} upd/s {row['samples_s']:10.0f} samples/s "
        f"{row['s_per_update'] * 1e3:7.1f} ms/upd/proc alloc {row['alloc_mb']:6.1f} MB "
        f"used/proc {row['used_mb_per_proc']:7.1f} MB",
        flush=True,
    )


def _print_table(rows: list[dict[str, Any]], workloads: list[str], ks: list[int]) -> None:
    index = {(r["workload"], r["k"], r["dp"]): r for r in rows}
    print()
    print(
        "| workload | K | DP upd/s | DP samples/s | non-DP upd/s | non-DP samples/s "
        "| DP/non-DP (samples/s) | DP alloc MB/proc | DP used MB/proc |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for w in workloads:
        for k in ks:
            on, off = index[(w, k, True)], index[(w, k, False)]
            print(
                f"| {w} | {k} | {on['updates_s']:.1f} | {on['samples_s']:.0f} | {off['updates_s']:.1f} "
                f"| {off['samples_s']:.0f} | {on['samples_s'] / off['samples_s']:.2f} "
                f"| {on['alloc_mb']:.1f} | {on['used_mb_per_proc']:.0f} |"
            )
    for w in workloads:
        best = max(ks, key=lambda k: index[(w, k, True)]["samples_s"])
        top = index[(w, best, True)]["samples_s"]
        plateau = min(k for k in ks if index[(w, k, True)]["samples_s"] >= 0.9 * top)
        print(
            f"{w}: DP peak {top:.0f} samples/s at K={best}; 90% of peak reached at K={plateau} "
            f"(concurrent DP clients the device sustains before throughput plateaus)"
        )


if __name__ == "__main__":
    main()
