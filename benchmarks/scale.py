"""Simulation at scale: seconds per round, peak memory and the time split, per population size.

Usage: ``python benchmarks/scale.py [--clients 100,1000,10000] [--rounds 4] [--device cuda]``

Each population runs once, in its own process (fresh Ray, fresh caches), with 10 clients
sampled per round, the MLP, DP-SGD on with a budget too large to bind, plaintext
aggregation, and ``synthetic:0.5,0.5`` data (each client's data is generated only when it
is sampled). The parent samples the summed RSS of that process and all its descendants
(Ray's GCS, raylet and workers) every 0.2 s; RSS double-counts shared pages (torch's
libraries in every worker), so the sum is an upper bound on what the machine used.

Reported per population:

- ``start-up``: wall time until the first client starts training (Ray start-up, node
  registration, first dispatch); ``round-1`` includes it.
- ``s/round``: median ``round-seconds`` of rounds 2.. (round 1 carries Ray's start-up).
- ``updates/s``: successful client updates per second of round time (same rounds).
- time split (medians, seconds): clients' training (the ClientApp's handler, timed inside
  the worker), aggregation, central evaluation, and framework overhead measured two ways:
  ``round - slowest client`` (as specified), and ``idle``: round time during which no
  client was computing and the server was neither aggregating nor evaluating.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve()
_SAMPLE_SECONDS = 0.2


# --- memory of a process tree --------------------------------------------------------------


def tree_rss(pid: int) -> int:
    """Summed RSS in bytes of ``pid`` and all its descendants (psutil, else /proc)."""
    try:
        import psutil
    except ImportError:
        return _proc_tree_rss(pid)
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            continue
    return total


def _proc_tree_rss(pid: int) -> int:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0, [pid]
    page = os.sysconf("SC_PAGE_SIZE")
    while todo:
        current = todo.pop()
        todo += children.get(current, [])
        try:
            total += int(Path(f"/proc/{current}/statm").read_text().split()[1]) * page
        except (OSError, IndexError, ValueError):
            continue
    return total


class PeakSampler(threading.Thread):
    """Samples :func:`tree_rss` of ``pid`` until stopped; keeps the peak."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak = pid, 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(_SAMPLE_SECONDS):
            self.peak = max(self.peak, tree_rss(self.pid))

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return self.peak


# --- one population, in a child process ----------------------------------------------------


def scenario(args: argparse.Namespace, num_clients: int) -> Any:
    """The benchmark scenario for ``num_clients`` virtual clients."""
    from fedsys.config import RunConfig

    return RunConfig().replace(
        {
            "num-rounds": args.rounds,
            "dataset": "synthetic:0.5,0.5",
            "partition": "natural",
            "model": "mlp",
            "device": args.device,
            "simulation.num-clients": num_clients,
            "simulation.num-cpus": args.num_cpus,
            "simulation.num-gpus": args.num_gpus,
            "sampling.clients-per-round": args.per_round,
            "sampling.min-clients": 1,
            "train.batch-size": 16,
            "train.local-epochs": args.local_epochs,
            "train.lr": 0.05,
            "train.momentum": 0.0,
            "dp.enabled": not args.no_dp,
            "budget.max-epsilon": 1e6,
            "secagg.enabled": False,
        }
    )


def timed_client_app(local: dict[str, Any], timing_path: str) -> Any:
    """fedsys' ClientApp wiring, with each training call's wall time appended to a file."""
    from flwr.app import Context, Message
    from flwr.clientapp import ClientApp

    from fedsys.node import handlers

    client = ClientApp()

    @client.train()
    def train(message: Message, context: Context) -> Message:
        start = time.time()
        reply = handlers.train(message, context, local)
        line = {"round": int(str(message.content.config_records["config"]["server-round"]))}
        line |= {"start": start, "end": time.time()}
        with open(timing_path, "a") as fh:  # one short line per write: appends stay whole
            fh.write(json.dumps(line) + "\n")
        return reply

    return client


def run_one(args: argparse.Namespace, num_clients: int, run_dir: Path) -> dict[str, Any]:
    """Simulate one population (mirrors ``simulations.harness.run_scenario``) and time it."""
    from flwr.simulation import run_simulation

    from server.app import make_server_app
    from simulations.harness import backend_config, local_settings

    config = scenario(args, num_clients).replace(
        {"out-dir": str(run_dir), "ledger-dir": str(run_dir / "ledgers")}
    )
    timing = run_dir / "client-times.jsonl"
    run_dir.mkdir(parents=True, exist_ok=True)
    logging.getLogger("flwr").setLevel(logging.ERROR)
    ends: dict[int, float] = {}
    server = make_server_app(
        config, simulated=True, on_round=lambda r: ends.update({r["round"]: time.time()})
    )
    started = time.perf_counter()
    began = time.time()
    run_simulation(
        server_app=server,
        client_app=timed_client_app(local_settings(config), str(timing)),
        num_supernodes=num_clients,
        backend_config=backend_config(config),
    )
    wall = time.perf_counter() - started
    return summarise(run_dir, timing, ends, wall=wall, began=began)


def _union(intervals: list[tuple[float, float]]) -> float:
    covered, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            covered += end - max(start, reach)
            reach = end
    return covered


def summarise(
    run_dir: Path, timing: Path, ends: dict[int, float], *, wall: float, began: float
) -> dict[str, Any]:
    """Per-round split from metrics.jsonl and the clients' own timings."""
    from fedsys.results import read_metrics

    clients: dict[int, list[tuple[float, float]]] = {}
    for line in timing.read_text().splitlines():
        item = json.loads(line)
        clients.setdefault(item["round"], []).append((item["start"], item["end"]))
    rounds = []
    for record in read_metrics(run_dir):
        rnd, seconds = record["round"], record["round-seconds"]
        spans = clients.get(rnd, [])
        end = ends.get(rnd, 0.0)
        window = [(max(s, end - seconds), min(e, end)) for s, e in spans]
        slowest = max((e - s for s, e in spans), default=0.0)
        busy = _union(window) + record["aggregate-seconds"] + record["eval-seconds"]
        rounds.append(
            {
                "round": rnd,
                "round-seconds": seconds,
                "updates": record["clients-succeeded"],
                "client-seconds": sum(e - s for s, e in spans),
                "slowest-client-seconds": slowest,
                "aggregate-seconds": record["aggregate-seconds"],
                "eval-seconds": record["eval-seconds"],
                "overhead-seconds": seconds - slowest,
                "idle-seconds": max(0.0, seconds - busy),
            }
        )
    # until the first client starts training: Ray start-up, node registration, first dispatch
    startup = min((s for s, _ in clients.get(1, [])), default=began) - began
    return {"wall-seconds": wall, "startup-seconds": startup, "rounds": rounds}


# --- parent: run each population in a child and print the table ------------------------------


def measure(args: argparse.Namespace, num_clients: int, workdir: Path) -> dict[str, Any]:
    """Run one population in a child process while sampling its memory."""
    result_path = workdir / f"result-{num_clients}.json"
    command = [sys.executable, str(_HERE), "--child", str(num_clients), "--result", str(result_path)]
    command += _forwarded(args) + ["--workdir", str(workdir)]
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "RAY_DEDUP_LOGS": "0"}
    with open(workdir / f"child-{num_clients}.log", "w") as log:
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        sampler = PeakSampler(child.pid)
        sampler.start()
        code = child.wait()
        peak = sampler.stop()
    if code != 0:
        raise SystemExit(
            f"{num_clients} clients: child failed ({code}); see {workdir}/child-{num_clients}.log"
        )
    result: dict[str, Any] = json.loads(result_path.read_text())
    result["peak-rss-bytes"] = peak
    return result


def _forwarded(args: argparse.Namespace) -> list[str]:
    out = ["--rounds", str(args.rounds), "--per-round", str(args.per_round), "--device", args.device]
    out += ["--local-epochs", str(args.local_epochs)]
    out += ["--num-cpus", str(args.num_cpus), "--num-gpus", str(args.num_gpus)]
    return out + (["--no-dp"] if args.no_dp else [])


def _median(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in rows) if rows else float("nan")


def report(num_clients: int, result: dict[str, Any]) -> str:
    """One line of the results table."""
    later = result["rounds"][1:] or result["rounds"]
    per_round = _median(later, "round-seconds")
    rate = statistics.median(r["updates"] / r["round-seconds"] for r in later)
    startup = result["startup-seconds"]
    overhead, idle = _median(later, "overhead-seconds"), _median(later, "idle-seconds")
    cells = [
        f"{num_clients:>7,}",
        f"{startup:>9.1f}",
        f"{result['rounds'][0]['round-seconds']:>8.2f}",
        f"{per_round:>8.2f}",
        f"{rate:>9.2f}",
        f"{result['peak-rss-bytes'] / 2**30:>8.2f}",
        f"{_median(later, 'slowest-client-seconds'):>8.2f}",
        f"{_median(later, 'client-seconds'):>8.2f}",
        f"{_median(later, 'aggregate-seconds'):>6.3f}",
        f"{_median(later, 'eval-seconds'):>6.3f}",
        f"{overhead:>8.2f} ({100 * overhead / per_round:>3.0f}%)",
        f"{idle:>6.2f} ({100 * idle / per_round:>3.0f}%)",
        f"{result['wall-seconds']:>7.1f}",
    ]
    return " ".join(cells)


HEADER = (
    "clients  start-up  round-1  s/round  updates/s  peak-GB  slowest  clients  aggr   eval   "
    "round-slowest    idle          wall\n"
    "              s        s        s                   RSS     s    sum s     s      s     "
    "s (% of round)   s (%)           s"
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="100,1000,10000", help="comma-separated population sizes")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--per-round", type=int, default=10)
    parser.add_argument("--local-epochs", type=int, default=1, help="more local work per client")
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--num-cpus", type=float, default=1.0, help="CPUs per virtual client")
    parser.add_argument("--num-gpus", type=float, default=0.0, help="GPU fraction per virtual client")
    parser.add_argument("--no-dp", action="store_true", help="plain SGD instead of DP-SGD")
    parser.add_argument("--json", type=Path, help="also write all results here")
    parser.add_argument("--workdir", type=Path, help="run directories and logs (default: a temp dir)")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Run every population and print the table."""
    args = parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="fedsys-scale-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if args.child is not None:
        result = run_one(args, args.child, workdir / f"run-{args.child}")
        args.result.write_text(json.dumps(result))
        return
    sizes = [int(n) for n in args.clients.split(",")]
    print(
        f"{'DP-SGD' if not args.no_dp else 'no DP'}, {args.per_round} clients/round, {args.rounds} rounds, "
        f"device {args.device}, {os.cpu_count()} CPUs; runs in {workdir}"
    )
    print(HEADER, flush=True)
    results = {}
    for n in sizes:
        results[n] = measure(args, n, workdir)
        print(report(n, results[n]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
