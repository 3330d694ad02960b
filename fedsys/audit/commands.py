"""The ``fedsys audit`` command (registered by :mod:`fedsys.cli`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

AUDIT_HELP = (
    "Empirical lower bound on epsilon from one training run (Steinke, Nasr & Jagielski, NeurIPS 2023).\n\n"
    "Adds m Dirac canaries (one rarely used input feature set high, a label), each included with "
    "probability 1/2 and given to a random simulated holder, runs the scenario through the normal "
    "simulation (same ServerApp/ClientApp, DP-SGD, ledgers, SecAgg+), scores every canary from the "
    "global models the server released, and converts the guesses into a lower bound on epsilon at "
    "the scenario's delta. Prints the accountant's epsilon beside it and writes DIR/audit.json. "
    "A lower bound above the accountant's epsilon is a privacy bug (at the stated confidence); a "
    "small lower bound proves nothing: it is what this attack could show, not what DP allows.\n\n"
    "A client-level distributed-DP scenario (dp.mode = distributed, dp.level = client) gets the "
    "client-level audit instead: m simulated clients are canary slots, each included with probability "
    "1/2; an included one sends a secret random direction at the clipping norm through the same "
    "clipping, Skellam share and SecAgg+ path, and the server scores each direction against the "
    "released models (Andrew et al., ICLR 2024). With --no-dp the noise is made negligible, not removed."
)


def register(app: typer.Typer) -> None:
    """Attach ``audit`` to ``app``."""
    app.command(name="audit", help=AUDIT_HELP)(audit)


def audit(
    scenario: Annotated[Path, typer.Argument(help="Scenario TOML (see simulations/).")],
    no_dp: Annotated[
        bool, typer.Option("--no-dp", help="Audit the run with DP-SGD off (attack power).")
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option(help="Run directory, also holding audit.json (default: runs/audit-<scenario>-<time>)."),
    ] = None,
    canaries: Annotated[
        int | None,
        typer.Option(
            help="Number of canaries m (default: one per rarely used feature, up to 1000; ten per feature "
            "when fewer than 100 features are rarely used)."
        ),
    ] = None,
    confidence: Annotated[float, typer.Option(help="Confidence 1 - beta of the lower bound.")] = 0.95,
    amplitude: Annotated[
        float | None,
        typer.Option(
            help="Value of each canary's one non-zero feature (default: 30, beyond [0, 1] on purpose, when "
            "every canary has a feature of its own; 5 when canaries share features)."
        ),
    ] = None,
    audit_seed: Annotated[
        int | None, typer.Option(help="Seed of canaries and inclusion bits (default: OS entropy).")
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Any config key, e.g. --set num-rounds=5")
    ] = None,
) -> None:
    from fedsys.cli import guarded, load_scenario, stdout

    def _run() -> None:
        from fedsys.audit.client_level import audit_client_level, is_client_level
        from fedsys.audit.federated import audit_federated

        config = load_scenario(scenario, {}, set_ or [])
        run_dir = out or Path("runs") / f"audit-{scenario.stem}-{time.strftime('%Y%m%d-%H%M%S')}"
        if is_client_level(config):  # canary clients (noise kept negligible, not off, with --no-dp)
            result = audit_client_level(
                config, run_dir, canaries=canaries, confidence=confidence, audit_seed=audit_seed, no_dp=no_dp
            )
        else:
            config = load_scenario(scenario, {"dp.enabled": False if no_dp else None}, set_ or [])
            result = audit_federated(
                config,
                run_dir,
                canaries=canaries,
                confidence=confidence,
                amplitude=amplitude,
                audit_seed=audit_seed,
            )
        path = result.write(run_dir)
        eps = f"{result.epsilon:.3f}" if result.dp else "inf (DP off)"
        verdict = "VIOLATION: lower bound above the accountant's epsilon" if result.violated else "consistent"
        stdout.print(
            f"epsilon (accountant) {eps}   epsilon lower bound {result.epsilon_lower_bound:.3f}   "
            f"canaries {result.canaries}   confidence {result.confidence:g}   delta {result.delta:g}\n"
            f"attack {result.attack}: {result.correct}/{result.guesses} guesses right   {verdict}\n"
            + (
                f"Gaussian-fit estimate (Andrew et al. 2024; not a bound) {result.epsilon_estimate:.3f}\n"
                if result.epsilon_estimate is not None
                else ""
            )
            + f"{path}",
            highlight=False,
            soft_wrap=True,
        )

    guarded(_run)
