"""The server's round loop: sample, train (plain or secure aggregation), step the server
optimizer, evaluate, record."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.serverapp import Grid

from fedsys import results
from fedsys.config import RunConfig, ServerConfig
from fedsys.coordinator.checkpoint import ServerState, load_checkpoint, save_checkpoint
from fedsys.coordinator.plain import plain_evaluation, plain_round
from fedsys.coordinator.population import Population, discover
from fedsys.coordinator.round import UNKNOWN_REFUSAL, RoundOutcome, describe_refusals
from fedsys.data import central_test_data
from fedsys.data.dataset import ArrayDataset
from fedsys.errors import AbortedRoundError, FedsysError
from fedsys.evaluation import EvaluationSums
from fedsys.models import build_checked_model, load_weights, to_arrays
from fedsys.models.factory import declared_signature
from fedsys.strategy import ServerOptimizerState, apply_server_optimizer, resume_optimizer_state
from fedsys.strategy.averaging import IterateAverage, released_model, resume_average, update_average
from fedsys.tracking import Tracker, open_trackers
from fedsys.training import evaluate, resolve_device

log = logging.getLogger("fedsys")
RoundCallback = Callable[[dict[str, Any]], None]


@dataclass
class Coordinator:
    """Drives one federated run on a Flower ``Grid``."""

    grid: Grid
    config: RunConfig
    run_dir: Path
    simulated: bool
    on_round: RoundCallback | None = None
    resume: bool = False
    run_id: str = ""  # deployment: Flower's run id, so the operator sees one id; "": draw one
    history: list[dict[str, Any]] = field(default_factory=list)
    epsilon_by_client: dict[str, float] = field(default_factory=dict)  # latest cumulative epsilon
    refusal_by_client: dict[str, str] = field(default_factory=dict)  # why each excluded client declined
    clients_seen: set[str] = field(default_factory=set)  # every client key the run found, over all rounds
    optimizer_state: ServerOptimizerState = field(init=False)
    average_state: IterateAverage = field(init=False)  # server.average: what the server releases
    trackers: list[Tracker] = field(default_factory=list, init=False, repr=False)
    num_classes: int = field(default=0, init=False)  # of the model; sizes the evaluation section

    def __post_init__(self) -> None:
        self.config = self.config.resolved()  # config.toml, trackers and holders name what is used
        self.optimizer_state = ServerOptimizerState(self.config.server.optimizer)
        self.average_state = IterateAverage(self.config.server.average)

    def run(self) -> dict[str, Any]:
        """Run (or resume) all rounds; returns the summary written to summary.json."""
        self.trackers = open_trackers(self.config, self.run_dir, resume=self.resume)
        finished = False
        try:
            summary = self._run_rounds()
            finished = True
            return summary
        finally:
            for tracker in self.trackers:
                tracker.close(finished=finished)

    def _run_rounds(self) -> dict[str, Any]:
        cfg = self.config
        central = None if cfg.dataset == "node" else central_test_data(cfg)
        model = _initial_model(cfg, central)
        self.num_classes = central.num_classes if central is not None else cfg.num_classes
        weights, rng, run_id, start, exhausted = self._initial_state(model)
        population = discover(self.grid, cfg, simulated=self.simulated)
        self.clients_seen.update(population.keys)
        device = resolve_device(cfg.device)
        stop_reason = ""
        for rnd in range(start, cfg.num_rounds + 1):
            if not self.simulated:  # SuperNodes may join, leave or reconnect between rounds
                population = discover(self.grid, cfg, simulated=False)
                self.clients_seen.update(population.keys)
            available = population.available(exhausted)
            if len(available) < cfg.sampling.min_clients:
                stop_reason = (
                    f"stopped before round {rnd}: only {len(available)} client(s) can still "
                    f"train (sampling.min-clients = {cfg.sampling.min_clients})"
                    f"{_excluded(exhausted, self.refusal_by_client)}"
                )
                log.warning(stop_reason)
                break
            started = time.perf_counter()
            assignment = population.sample(available, cfg.sampling, rng)
            sampled = list(assignment)
            outcome = self._train_round(assignment, weights, rnd, run_id)
            exhausted.update(assignment[n] for n in outcome.declined)
            self.refusal_by_client.update({assignment[n]: code for n, code in outcome.refusals.items()})
            self.epsilon_by_client.update({assignment[n]: eps for n, eps in outcome.epsilons.items()})
            weights, self.optimizer_state = next_model(
                weights, outcome, self.optimizer_state, config=cfg.server, rnd=rnd
            )
            if outcome.delta is not None:  # post-processing of the released aggregates only
                self.average_state = update_average(self.average_state, weights, config=cfg.server)
            t_eval = time.perf_counter()
            record = outcome.record(rnd, sampled)
            if central is not None:
                load_weights(model, released_model(self.average_state, weights), source="aggregate")
                ev = evaluate(model, central, device=device)
                record.update({"loss": ev.loss, **ev.metrics})
            record["eval-seconds"] = time.perf_counter() - t_eval
            record["round-seconds"] = time.perf_counter() - started
            self._finish_round(
                record,
                ServerState(
                    rnd,
                    run_id,
                    weights,
                    dict(rng.bit_generator.state),
                    self.history,
                    sorted(exhausted),
                    strategy={
                        "epsilon-by-client": dict(self.epsilon_by_client),
                        # deployment only: a simulation's clients are its fixed partitions
                        "clients-seen": [] if self.simulated else sorted(self.clients_seen),
                    },
                    optimizer=self.optimizer_state,
                    average=self.average_state,
                ),
            )
        released = released_model(self.average_state, weights)
        final = self._final_evaluation(population, released, rng, run_id)
        return self._summarise(released, run_id, stop_reason, final)

    def _final_evaluation(
        self, population: Population, weights: dict[str, np.ndarray], rng: np.random.Generator, run_id: str
    ) -> EvaluationSums | None:
        """Score the final model by one evaluation-only exchange (no training, no privacy budget):
        a SecAgg+ round of evaluation sums, or plaintext sums from holders that allow them."""
        cfg = self.config
        available = population.available(set())  # scoring costs no budget: exhausted holders too
        if not (cfg.evaluation.federated and self.num_classes and self.history and available):
            return None
        assignment = population.sample(available, cfg.sampling, rng)
        rnd = cfg.num_rounds + 1  # its own SecAgg+ context: never a replay of the last round
        score: Callable[..., RoundOutcome]
        if cfg.secagg.enabled:
            from fedsys.coordinator.secure import secure_round

            score = partial(secure_round, evaluate_only=True)
        else:
            score = plain_evaluation
        try:
            outcome = score(
                self.grid,
                cfg,
                assignment,
                weights,
                rnd,
                run_id,
                simulated=self.simulated,
                num_classes=self.num_classes,
            )
        except FedsysError as err:
            log.warning("final federated evaluation failed: %s", err)
            return None
        if outcome.evaluation is None or outcome.evaluation.examples <= 0:
            why = outcome.message or outcome.declined_summary()
            log.warning("final federated evaluation: no sums released (%s)", why)
            return None
        log.info("final federated evaluation: %s", outcome.evaluation.summary())
        return outcome.evaluation

    def _initial_state(
        self, model: torch.nn.Module
    ) -> tuple[dict[str, np.ndarray], np.random.Generator, str, int, set[str]]:
        rng = np.random.default_rng([self.config.seed, 7])
        if self.resume:
            state = load_checkpoint(self.run_dir)
            rng.bit_generator.state = state.rng_state
            self.history = state.history
            self.epsilon_by_client = dict(state.strategy.get("epsilon-by-client", {}))
            self.clients_seen = set(state.strategy.get("clients-seen", []))
            self.optimizer_state = resume_optimizer_state(
                state.optimizer, state.weights, config=self.config.server
            )
            self.average_state = resume_average(state.average, state.weights, config=self.config.server)
            results.rewrite_metrics(self.run_dir, self.history)
            log.info("resuming run %s after round %d", state.run_id, state.round)
            return state.weights, rng, state.run_id, state.round + 1, set(state.exhausted)
        results.write_config(self.run_dir, self.config)
        results.rewrite_metrics(self.run_dir, [])
        return to_arrays(model), rng, self.run_id or secrets.token_hex(8), 1, set()

    def _train_round(
        self, assignment: dict[int, str], weights: dict[str, np.ndarray], rnd: int, run_id: str
    ) -> RoundOutcome:
        cfg = self.config
        classes = self.num_classes if cfg.evaluation.federated else 0
        train: Callable[..., RoundOutcome] = plain_round
        if cfg.secagg.enabled:
            from fedsys.coordinator.secure import secure_round

            train = secure_round
        try:
            return train(
                self.grid,
                cfg,
                assignment,
                weights,
                rnd,
                run_id,
                simulated=self.simulated,
                num_classes=classes,
            )
        except AbortedRoundError as err:
            log.warning("round %d abandoned: %s", rnd, err)
            return RoundOutcome(sampled=list(assignment), status="abandoned", message=str(err))

    def _finish_round(self, record: dict[str, Any], state: ServerState) -> None:
        self.history.append(record)
        results.append_metrics(self.run_dir, record)
        for tracker in self.trackers:
            tracker.log_round(record)
        if state.round % self.config.checkpoint_every == 0 or state.round == self.config.num_rounds:
            save_checkpoint(self.run_dir, state)
        log.info("round %d: %s", state.round, _brief(record))
        if self.on_round is not None:
            self.on_round(record)

    def _summarise(
        self,
        weights: dict[str, np.ndarray],
        run_id: str,
        stop_reason: str,
        final: EvaluationSums | None = None,
    ) -> dict[str, Any]:
        results.write_model(self.run_dir, weights)
        last = self.history[-1] if self.history else {}
        federated = {f"final-{k}": v for k, v in final.summary().items()} if final is not None else {}
        source = "federated" if final is not None else None
        if last.get("accuracy") is not None:
            source = "central"
        summary = {
            "run-id": run_id,
            # completed = released an aggregate; an abandoned round left the model unchanged
            "rounds-completed": sum(r.get("status") == "ok" for r in self.history),
            "rounds-abandoned": sum(r.get("status") == "abandoned" for r in self.history),
            "rounds-planned": self.config.num_rounds,
            "simulated": self.simulated,
            "clients-seen": len(self.clients_seen),
            "final-loss": last.get("loss"),
            "final-accuracy": last.get("accuracy", federated.get("final-federated-accuracy")),
            "final-accuracy-source": source,
            "final-macro-f1": last.get("macro-f1", federated.get("final-federated-macro-f1")),
            "epsilon-max": max((r.get("epsilon-max") or 0.0 for r in self.history), default=0.0),
            "epsilon-by-client": dict(sorted(self.epsilon_by_client.items())),
            "dp": self.config.dp.enabled,
            "secagg": self.config.secagg.enabled,
            "stop-reason": stop_reason,
            "run-dir": str(self.run_dir),
            **federated,
        }
        results.write_summary(self.run_dir, summary)
        return summary


def next_model(
    weights: dict[str, np.ndarray],
    outcome: RoundOutcome,
    state: ServerOptimizerState,
    *,
    config: ServerConfig,
    rnd: int,
) -> tuple[dict[str, np.ndarray], ServerOptimizerState]:
    """The global model and server-optimizer state after a round.

    Only the round's aggregate (``outcome.delta``) reaches the optimizer, whichever aggregation
    produced it. A round without one leaves model and state as they were; so does a step the
    optimizer refuses (a model that would not be finite), which abandons the round.
    """
    if outcome.delta is None:
        return weights, state
    try:
        return apply_server_optimizer(weights, outcome.delta, state, config=config)
    except AbortedRoundError as err:
        outcome.status, outcome.delta = "abandoned", None
        outcome.message = f"{err}; global model unchanged"
        log.warning("round %d abandoned: %s", rnd, outcome.message)
        return weights, state


def _initial_model(cfg: RunConfig, central: ArrayDataset | None) -> torch.nn.Module:
    if central is not None:
        shape, classes = central.feature_shape, central.num_classes
    else:
        shape, classes = declared_signature(cfg.feature_shape, cfg.num_classes)
    torch.manual_seed(cfg.seed)
    return build_checked_model(cfg.model, shape, classes, fix=cfg.fix_model, dp=cfg.dp.enabled)


def _excluded(exhausted: Collection[str], refusals: Mapping[str, str]) -> str:
    """Why clients are out of the run: ``; 4 exhausted their privacy budget`` when all ran out of
    budget, else their refusal codes (a client excluded before a resume has none recorded)."""
    if not exhausted:
        return ""
    codes = [refusals.get(key, UNKNOWN_REFUSAL) for key in exhausted]
    if set(codes) == {"budget"}:
        return f"; {len(codes)} exhausted their privacy budget"
    return f"; {len(codes)} declined for the rest of the run: {describe_refusals(codes)}"


def _brief(record: dict[str, Any]) -> str:
    keys = (
        "status",
        "accuracy",
        "loss",
        "clients-succeeded",
        "clients-failed",
        "clients-declined",
        "epsilon-max",
    )
    return ", ".join(
        f"{k}={record[k]:.4g}" if isinstance(record.get(k), float) else f"{k}={record.get(k)}"
        for k in keys
        if k in record
    )
