"""Where a deployment round's seconds go: simulation vs deployment, plaintext vs SecAgg+, per stage.

Usage: ``python benchmarks/deploy_latency.py [--rounds 4] [--holds 0,20] [--no-simulation]``

The same scenario (``simulations/deploy-digits.toml``: digits, logistic regression, DP-SGD at
ε = 3, two holders) runs

- in simulation (``fedsys simulate simulations/digits.toml`` with 2 clients, same model and
  training settings), and
- in deployment, through ``fedsys demo deploy``'s machinery (TLS SuperLink with node
  authentication, the Fleet proxy, two SuperNodes with their app gates, ``fedsys server run``),
  once per ``--holds`` value of the proxy's pull hold (0 is Flower's own behaviour: an empty
  pull is answered at once and the SuperNode then sleeps 3 s before pulling again).

Per round: ``round-seconds`` from ``metrics.jsonl`` (the first round is left out: it carries
start-up). Per message at each holder, from its ``HOME/supernode.log`` (millisecond timestamps):

- ``wait``: the holder's previous reply sent -> this message received (the other holder, the
  server's work, and the delivery to the SuperNode: Flower's pull sleep without the hold);
- ``start``: received -> task answered, less the handler's own compute time (gate poll, fork
  from the preloaded forkserver, the task's Runtime API calls);
- ``compute``: the handler itself (``task answered in X s``);
- ``reply``: answered -> ``Sent successfully`` (the SuperNode notices the reply on a 0.5 s tick,
  ``time.sleep(0.5)`` in ``flwr/supernode/start_client_internal.py``, then pushes it).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from fedsys.deploy.demo import DemoOptions, demo_cluster
from fedsys.deploy.process import executable

ROOT = Path(__file__).resolve().parents[1]
_LINE = re.compile(r"^(\S+) \[(supernode|gate)\] (.*)$")  # a holder's HOME/supernode.log


def simulate(rounds: int, secagg: bool, out: Path) -> list[float]:
    """Round seconds of the matching simulation (first round dropped)."""
    argv = [executable("fedsys"), "simulate", str(ROOT / "simulations" / "digits.toml"), "--out", str(out)]
    for key, value in {
        "num-rounds": rounds,
        "simulation.num-clients": 2,
        "sampling.clients-per-round": 2,
        "secagg.enabled": str(secagg).lower(),
    }.items():
        argv += ["--set", f"{key}={value}"]
    subprocess.run(argv, check=True, capture_output=True, timeout=600)
    return _round_seconds(out)


def _round_seconds(run_dir: Path) -> list[float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [float(r["round-seconds"]) for r in records][1:]


def stages(holder_logs: list[Path], start: float, end: float) -> dict[str, dict[str, list[float]]]:
    """Per message type, per stage, the seconds measured at every holder between start and end."""
    found: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for log in holder_logs:
        events = []
        for line in log.read_text(errors="replace").splitlines():
            match = _LINE.match(line)
            if (
                match is not None
                and start <= (stamp := dt.datetime.fromisoformat(match[1]).timestamp()) <= end
            ):
                events.append((stamp, match[2], match[3]))
        _holder_stages(events, found)
    return found


def _holder_stages(events: list[tuple[float, str, str]], found: dict[str, dict[str, list[float]]]) -> None:
    last_sent = received = answered = None
    kind, compute = "", 0.0
    for stamp, _, text in events:
        if "Received successfully" in text:
            received = stamp
        elif (m := re.search(r": ([\w.]+) task answered in ([\d.]+) s", text)) and received is not None:
            kind, compute, answered = m[1], float(m[2]), stamp
        elif "Sent successfully" in text and answered is not None and received is not None:
            if last_sent is not None:
                found[kind]["wait"].append(received - last_sent)
            found[kind]["start"].append(max(0.0, answered - received - compute))
            found[kind]["compute"].append(compute)
            found[kind]["reply"].append(stamp - answered)
            last_sent, received, answered = stamp, None, None


def deploy(rounds: int, hold: float, root: Path, modes: list[bool]) -> dict[str, object]:
    """Run SecAgg+ and/or plaintext on one demo cluster; round seconds and stages of each."""
    results: dict[str, object] = {}
    options = DemoOptions(out=root, holders=2, allow_plaintext=False in modes, pull_hold=hold)
    with demo_cluster(options, lambda line: print(line, flush=True)) as cluster:
        for secagg in modes:
            name = "secagg" if secagg else "plaintext"
            started = time.time()
            run_dir = cluster.run(name, secagg=secagg, rounds=rounds)
            logs = [cluster.root / name / "node" / "supernode.log" for name in cluster.names]
            per_stage = stages(logs, started, time.time())
            results[name] = {"round-seconds": _round_seconds(run_dir), "stages": per_stage}
    return results


def _median(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}" if values else "-"


def report(results: dict[str, object]) -> None:
    """Print the per-round and per-stage medians."""
    for mode, value in results.items():
        if not isinstance(value, dict):
            continue
        for name, run in value.items():
            seconds = run["round-seconds"] if isinstance(run, dict) else run
            print(f"{mode:12s} {name:9s} round median {_median(seconds)} s  {seconds}")
            if isinstance(run, dict):
                for kind, parts in run["stages"].items():
                    row = "  ".join(
                        f"{stage} {_median(parts[stage])}" for stage in ("wait", "start", "compute", "reply")
                    )
                    print(f"    {kind:22s} {row}  (n={len(parts['compute'])})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--holds", default="0,20", help="proxy pull holds to compare (seconds)")
    parser.add_argument("--no-simulation", action="store_true")
    parser.add_argument("--modes", default="secagg,plaintext", help="secagg and/or plaintext")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    results: dict[str, object] = {}
    modes = [mode == "secagg" for mode in args.modes.split(",")]
    with tempfile.TemporaryDirectory(prefix="fedsys-latency-") as tmp:
        if not args.no_simulation:
            results["simulation"] = {
                name: simulate(args.rounds, secagg, Path(tmp) / f"sim-{name}")
                for name, secagg in (("secagg", True), ("plaintext", False))
                if secagg in modes
            }
        for hold in (float(h) for h in args.holds.split(",")):
            results[f"deploy-hold-{hold:g}"] = deploy(args.rounds, hold, Path(tmp) / f"hold-{hold:g}", modes)
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
