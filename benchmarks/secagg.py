"""Seconds per round: fedsys SecAgg+ vs plaintext vs Flower's own SecAgg+ and FedAvg, one run.

Usage: ``python benchmarks/secagg.py [--clients 10,50,100] [--params 100000] [--rounds 5] [--quick]``
(``--quick``: 10 clients x 10k params, 2 rounds, a smoke test).

Every variant runs through Flower's simulation engine (``run_simulation``, Ray) on the same
virtual clients, with no training: each client answers with a fixed vector of ``--params``
float32 values (``1e-3 * (1 + partition % 5)``, so the exact mean is known). Per population,
one ServerApp runs the variants interleaved, round by round (one warm-up round each, not
counted), so every variant sees the same machine load:

- ``fedsys plain``: :func:`fedsys.coordinator.plain.plain_round` and fedsys' ClientApp handler.
- ``fedsys secagg+``: :func:`fedsys.coordinator.secure.secure_round` and fedsys' SecAgg+ client
  handlers (semi-honest server); ``fedsys secagg+ (malicious)`` appears when ``fedsys.config``
  has a ``secagg.mode`` switch, else its row says n/a.
- ``flower fedavg``: Flower's Message-API ``FedAvg`` (``flwr.serverapp.strategy``).
- ``flower secagg+``: Flower's legacy ``SecAggPlusWorkflow`` + ``secaggplus_mod`` with as many
  shares per client, and the same threshold, as fedsys' own SecAgg+ graph for that population.

fedsys' protocol code stays in the loop; only ``compute_update`` (local evaluation and
training) is replaced, inside the ClientApp, by the fixed vector. A round is timed from the
first message sent to the aggregate: ``plain_round``/``secure_round`` wall time for fedsys,
``configure_*`` to the end of ``aggregate_*`` for Flower. ``err`` is the largest absolute
difference between the aggregate and the exact mean (SecAgg+ quantises).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import secrets
import statistics
import tempfile
import time
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

PLAIN, SECURE, MALICIOUS = "fedsys plain", "fedsys secagg+", "fedsys secagg+ (malicious)"
FLOWER_PLAIN, FLOWER_SECURE = "flower fedavg", "flower secagg+"
TICK = " (0.2 s tick)"  # --compare-fixed-tick: fedsys' exchanges as they polled before
EXAMPLES = 100  # every client reports the same count: the weighted mean is the plain mean
TIMEOUT = 600.0


def client_value(partition: int) -> float:
    """The constant every coordinate of partition ``partition``'s update holds."""
    return 1e-3 * (1 + partition % 5)


def malicious_mode() -> str | None:
    """The ``secagg.mode`` value for a malicious-server SecAgg+, if fedsys has that switch."""
    from fedsys.config import SecAggConfig

    if "mode" not in {f.name for f in dataclasses.fields(SecAggConfig)}:
        return None
    hint = typing.get_type_hints(SecAggConfig).get("mode")
    modes = [str(m) for m in typing.get_args(hint)] or ["malicious"]
    return next((m for m in modes if "malicious" in m), None)


def fedsys_config(args: argparse.Namespace, num_clients: int, workdir: Path, mode: str | None) -> Any:
    """fedsys' scenario: no DP, every client sampled, SecAgg+ on for ``mode`` != "plain"."""
    from fedsys.config import RunConfig

    overrides: dict[str, Any] = {
        "dp.enabled": False,
        "secagg.enabled": mode != "plain",
        "simulation.num-clients": num_clients,
        "sampling.clients-per-round": num_clients,
        "sampling.min-clients": num_clients,
        "sampling.round-timeout": TIMEOUT,
        "out-dir": str(workdir / "runs"),
        "ledger-dir": str(workdir / "ledgers"),
    }
    if mode not in ("plain", "semi-honest"):
        overrides["secagg.mode"] = mode
    return RunConfig().replace(overrides)


# --- the ClientApp (runs in Ray workers) ------------------------------------------------------


def _fixed_update(config: Any, settings: Any, global_arrays: Any, **_: Any) -> Any:
    """Stands in for ``fedsys.node.update.compute_update``: no data, no training."""
    from fedsys.node.update import LocalUpdate

    value = client_value(settings.partition_id or 0)
    delta = {k: np.full(v.shape, value, np.float32) for k, v in global_arrays.items()}
    return LocalUpdate(status="ok", delta=delta, num_examples=EXAMPLES)


def _without_training() -> None:
    from fedsys.node import handlers, secure

    handlers.compute_update = _fixed_update  # type: ignore[assignment]
    secure.compute_update = _fixed_update  # type: ignore[assignment]


def _flower_reply(message: Any, context: Any) -> Any:
    from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

    vector = message.content["arrays"].to_numpy_ndarrays()[0]
    value = client_value(int(context.node_config["partition-id"]))
    arrays = ArrayRecord([np.full(vector.shape, value, np.float32)])
    metrics = MetricRecord({"num-examples": EXAMPLES})
    return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=message)


def _legacy_reply(message: Any, context: Any) -> Any:
    from flwr.client import NumPyClient
    from flwr.client.message_handler.message_handler import handle_legacy_message_from_msgtype

    partition = int(context.node_config["partition-id"])

    class Fixed(NumPyClient):  # type: ignore[misc]
        def fit(self, parameters: list[np.ndarray], config: Any) -> Any:
            return [np.full(parameters[0].shape, client_value(partition), np.float32)], EXAMPLES, {}

    return handle_legacy_message_from_msgtype(lambda _: Fixed().to_client(), message, context)


def bench_client_app(local: dict[str, Any]) -> Any:
    """fedsys' ClientApp handlers (training replaced) plus Flower's, told apart by content."""
    from flwr.client.mod import secaggplus_mod
    from flwr.clientapp import ClientApp

    from fedsys.node import handlers, secure

    client = ClientApp()

    def fedsys_handler(handler: Any) -> Callable[[Any, Any], Any]:
        def run(message: Any, context: Any) -> Any:
            _without_training()
            return handlers.private_errors(handler)(message, context, local)

        return run

    fedsys_train = fedsys_handler(handlers.train)

    @client.train()
    def train(message: Any, context: Any) -> Any:
        records = message.content.config_records
        if "secaggplus_configs" in records:
            return secaggplus_mod(message, context, _legacy_reply)
        if any(key.startswith("fitins") for key in message.content.keys()):
            return _legacy_reply(message, context)
        if "config" in records and records["config"].get("bench") == "flower":
            return _flower_reply(message, context)
        return fedsys_train(message, context)

    for action, handler in secure.HANDLERS.items():
        client.train(action)(fedsys_handler(handler))
    return client


# --- the ServerApp (runs in this process) -----------------------------------------------------

Runner = Callable[[int], tuple[float, np.ndarray]]  # round number -> (seconds, aggregate vector)


def flower_shares(num_clients: int) -> tuple[int, int]:
    """Flower's ``num_shares`` and ``reconstruction_threshold`` matching fedsys' graph for n."""
    from fedsys.secagg.graph import default_degree, default_threshold

    holders = min(default_degree(num_clients) + 1, num_clients)  # neighbours + the client itself
    return holders, default_threshold(holders)


def fedsys_runner(grid: Any, config: Any, nodes: list[int], params: int) -> Runner:
    """One fedsys round (plaintext or SecAgg+, as ``config`` says) over all ``nodes``."""
    from fedsys.coordinator.plain import plain_round
    from fedsys.coordinator.secure import secure_round

    round_fn = secure_round if config.secagg.enabled else plain_round
    weights = {"w": np.zeros(params, np.float32)}
    assignment = {node: str(i) for i, node in enumerate(nodes)}

    def run(rnd: int) -> tuple[float, np.ndarray]:
        started = time.perf_counter()
        outcome = round_fn(grid, config, assignment, weights, rnd, secrets.token_hex(8), simulated=True)
        seconds = time.perf_counter() - started
        if outcome.delta is None or len(outcome.succeeded) != len(nodes):
            raise RuntimeError(f"fedsys round {rnd} failed: {outcome.status} {outcome.message}")
        return seconds, outcome.delta["w"]

    return run


def fixed_tick(runner: Runner, seconds: float = 0.2) -> Runner:
    """``runner`` with fedsys' exchanges polling on a fixed tick (its behaviour before 2026-11-30)."""
    from fedsys.coordinator import messaging

    def run(rnd: int) -> tuple[float, np.ndarray]:
        saved = messaging.POLL_MIN_SECONDS, messaging.POLL_MAX_SECONDS
        messaging.POLL_MIN_SECONDS = messaging.POLL_MAX_SECONDS = seconds
        try:
            return runner(rnd)
        finally:
            messaging.POLL_MIN_SECONDS, messaging.POLL_MAX_SECONDS = saved

    return run


def flower_fedavg_runner(grid: Any, num_clients: int, params: int) -> Runner:
    """One round of Flower's Message-API FedAvg."""
    from flwr.app import ArrayRecord, ConfigRecord
    from flwr.serverapp.strategy import FedAvg

    class Timed(FedAvg):  # type: ignore[misc]
        def configure_train(self, *args: Any, **kwargs: Any) -> Any:
            self.started = time.perf_counter()
            return super().configure_train(*args, **kwargs)

        def aggregate_train(self, *args: Any, **kwargs: Any) -> Any:
            arrays, metrics = super().aggregate_train(*args, **kwargs)
            self.seconds, self.vector = time.perf_counter() - self.started, arrays.to_numpy_ndarrays()[0]
            return arrays, metrics

    def run(rnd: int) -> tuple[float, np.ndarray]:
        strategy = Timed(fraction_evaluate=0.0, min_train_nodes=num_clients, min_available_nodes=num_clients)
        initial = ArrayRecord([np.zeros(params, np.float32)])
        strategy.start(
            grid, initial, num_rounds=1, timeout=TIMEOUT, train_config=ConfigRecord({"bench": "flower"})
        )
        return strategy.seconds, strategy.vector

    return run


def flower_secagg_runner(grid: Any, context: Any, num_clients: int, params: int) -> Runner:
    """One round of Flower's legacy SecAgg+ (``SecAggPlusWorkflow``, semi-honest)."""
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server import LegacyContext, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

    class Timed(FedAvg):  # type: ignore[misc]
        def configure_fit(self, *args: Any, **kwargs: Any) -> Any:
            self.started = time.perf_counter()
            return super().configure_fit(*args, **kwargs)

        def aggregate_fit(self, *args: Any, **kwargs: Any) -> Any:
            parameters, metrics = super().aggregate_fit(*args, **kwargs)
            self.seconds = time.perf_counter() - self.started
            self.vector = parameters_to_ndarrays(parameters)[0]
            return parameters, metrics

    shares, threshold = flower_shares(num_clients)

    def run(rnd: int) -> tuple[float, np.ndarray]:
        strategy = Timed(
            fraction_evaluate=0.0,
            min_fit_clients=num_clients,
            min_available_clients=num_clients,
            initial_parameters=ndarrays_to_parameters([np.zeros(params, np.float32)]),
        )
        legacy = LegacyContext(
            context, config=ServerConfig(num_rounds=1, round_timeout=TIMEOUT), strategy=strategy
        )
        workflow = SecAggPlusWorkflow(num_shares=shares, reconstruction_threshold=threshold, timeout=TIMEOUT)
        DefaultWorkflow(fit_workflow=workflow)(grid, legacy)
        return strategy.seconds, strategy.vector

    return run


def wait_for_nodes(grid: Any, num_clients: int, timeout: float = 120.0) -> list[int]:
    """All simulated nodes (the ServerApp may start before they have registered)."""
    deadline = time.monotonic() + timeout
    while len(nodes := sorted(grid.get_node_ids())) < num_clients:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(nodes)} of {num_clients} nodes registered")
        time.sleep(0.2)
    return nodes


def bench_server_app(
    args: argparse.Namespace, num_clients: int, workdir: Path, results: dict[str, Any]
) -> Any:
    """A ServerApp that runs every variant, interleaved, and records each round."""
    from flwr.serverapp import ServerApp

    server = ServerApp()

    @server.main()
    def main(grid: Any, context: Any) -> None:
        logging.getLogger("flwr").setLevel(logging.ERROR)  # run_simulation set it to INFO/DEBUG
        try:
            nodes = wait_for_nodes(grid, num_clients)
            runners = make_runners(args, grid, context, nodes, workdir)
            expected = statistics.fmean(client_value(i) for i in range(num_clients))
            for rnd in range(args.warmup + args.rounds):
                names = list(runners)
                shift = rnd % len(names)  # rotate the order so no variant always goes first
                for name in names[shift:] + names[:shift]:
                    seconds, vector = runners[name](rnd + 1)
                    if rnd >= args.warmup:
                        results.setdefault(name, []).append((seconds, float(np.abs(vector - expected).max())))
        except BaseException as err:  # run_simulation only logs a ServerApp's exception
            results["error"] = err
            raise

    return server


def make_runners(
    args: argparse.Namespace, grid: Any, context: Any, nodes: list[int], workdir: Path
) -> dict[str, Runner]:
    """The variants measured, in their first-round order."""
    n, params = len(nodes), args.params
    runners = {
        FLOWER_PLAIN: flower_fedavg_runner(grid, n, params),
        PLAIN: fedsys_runner(grid, fedsys_config(args, n, workdir, "plain"), nodes, params),
        SECURE: fedsys_runner(grid, fedsys_config(args, n, workdir, "semi-honest"), nodes, params),
    }
    if args.compare_fixed_tick:
        runners[PLAIN + TICK] = fixed_tick(runners[PLAIN])
        runners[SECURE + TICK] = fixed_tick(runners[SECURE])
    mode = malicious_mode()
    if mode is not None:
        runners[MALICIOUS] = fedsys_runner(grid, fedsys_config(args, n, workdir, mode), nodes, params)
    if not args.skip_flower_secagg:
        runners[FLOWER_SECURE] = flower_secagg_runner(grid, context, n, params)
    return runners


def run_population(args: argparse.Namespace, num_clients: int, workdir: Path) -> dict[str, Any]:
    """All variants for ``num_clients`` virtual clients in one simulation."""
    from flwr.simulation import run_simulation

    from simulations.harness import backend_config, local_settings

    config = fedsys_config(args, num_clients, workdir, "plain")
    results: dict[str, Any] = {}
    run_simulation(
        server_app=bench_server_app(args, num_clients, workdir, results),
        client_app=bench_client_app(local_settings(config)),
        num_supernodes=num_clients,
        backend_config=backend_config(config),
    )
    if "error" in results:
        raise RuntimeError(f"{num_clients} clients: the benchmark ServerApp failed") from results["error"]
    return results


# --- the table -----------------------------------------------------------------------------------


def report(num_clients: int, params: int, results: dict[str, Any]) -> list[str]:
    """Rows of the table for one population, and the goal ratios."""
    med = {name: statistics.median(s for s, _ in rows) for name, rows in results.items()}
    lines = []
    for name in (FLOWER_PLAIN, PLAIN, PLAIN + TICK, SECURE, SECURE + TICK, MALICIOUS, FLOWER_SECURE):
        if name not in results and TICK in name:
            continue
        if name not in results:
            lines.append(f"{num_clients:>7} {params:>9,} {name:<27} {'n/a':>7}")
            continue
        seconds = [s for s, _ in results[name]]
        err = max(e for _, e in results[name])
        lines.append(
            f"{num_clients:>7} {params:>9,} {name:<27} {min(seconds):>7.3f} {med[name]:>7.3f} "
            f"{med[name] / med[PLAIN]:>8.2f}x {med[name] / med[FLOWER_PLAIN]:>8.2f}x {err:>9.1e}"
        )
    ratios = [f"fedsys secagg+/plain {med[SECURE] / med[PLAIN]:.2f}x (goal <= 1.5)"]
    if FLOWER_SECURE in med:
        ratios.append(f"flower secagg+/fedsys secagg+ {med[FLOWER_SECURE] / med[SECURE]:.2f}x (goal >= 4)")
    ratios.append(f"fedsys plain/flower fedavg {med[PLAIN] / med[FLOWER_PLAIN]:.2f}x (goal <= 1.1)")
    return lines + ["        " + "; ".join(ratios)]


HEADER = (
    "clients    params variant                         min  median  /fedsys-plain  /flower-fedavg  max-err\n"
    "                                                    s       s"
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="10,50,100", help="comma-separated population sizes")
    parser.add_argument("--params", type=int, default=100_000, help="values per update")
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds per variant")
    parser.add_argument("--warmup", type=int, default=1, help="uncounted rounds per variant first")
    parser.add_argument("--skip-flower-secagg", action="store_true", help="it is the slowest variant")
    parser.add_argument(
        "--compare-fixed-tick", action="store_true", help="also fedsys polling every 0.2 s, as it did before"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 10 clients x 10k params, 2 rounds")
    parser.add_argument("--workdir", type=Path, help="fedsys run and ledger directories (default: temp)")
    args = parser.parse_args(argv)
    if args.quick:
        args.clients, args.params, args.rounds = "10", 10_000, 2
    return args


def main(argv: list[str] | None = None) -> None:
    """Run every population and print the table."""
    args = parse_args(argv)
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    logging.getLogger("flwr").setLevel(logging.ERROR)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="fedsys-secagg-"))
    sizes = [int(n) for n in args.clients.split(",")]
    print(
        f"no training, {args.rounds} measured rounds per variant (+{args.warmup} warm-up), interleaved; "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
    )
    print(HEADER, flush=True)
    for n in sizes:
        results = run_population(args, n, workdir / f"clients-{n}")
        print("\n".join(report(n, args.params, results)), flush=True)


if __name__ == "__main__":
    main()
