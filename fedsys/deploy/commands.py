"""CLI commands of this subpackage (registered by :mod:`fedsys.cli`): ``certs``, ``server``, ``client``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

certs_app = typer.Typer(help="Create the federation's CA, the SuperLink certificate and node keys.")
server_app = typer.Typer(help="Operator: run the SuperLink and submit runs to it.")
client_app = typer.Typer(help="Data holder: run a SuperNode that trains on local data.")
demo_app = typer.Typer(help="Try fedsys end to end on this machine, with sample data.")

_STATE = typer.Option(help="SuperLink state directory (database, logs, flwr connection, runs).")


def register(app: typer.Typer) -> None:
    """Attach this subpackage's commands to ``app``."""
    app.add_typer(certs_app, name="certs", no_args_is_help=True)
    app.add_typer(server_app, name="server", no_args_is_help=True)
    app.add_typer(client_app, name="client", no_args_is_help=True)
    app.add_typer(demo_app, name="demo", no_args_is_help=True)


def _echo(line: str) -> None:
    typer.echo(line)


@certs_app.command("init")
def certs_init(
    directory: Annotated[Path, typer.Argument(help="Where to write ca.crt/server.crt/server.key.")],
    server_host: Annotated[str, typer.Option(help="DNS name (or IP) data holders use for the SuperLink.")],
    ca_dir: Annotated[
        Path | None, typer.Option(help="Where to write ca.key (default: DIRECTORY-ca); move it offline.")
    ] = None,
    server_ip: Annotated[
        list[str] | None, typer.Option(help="Extra IP address for the certificate (repeatable).")
    ] = None,
    loopback: Annotated[
        bool, typer.Option(help="Also cover localhost/127.0.0.1 (needed by the local ServerApp).")
    ] = True,
    days: Annotated[int, typer.Option(help="Validity of both certificates in days.")] = 365,
    force: Annotated[bool, typer.Option(help="Replace existing files.")] = False,
) -> None:
    """Create a CA and a SuperLink TLS certificate signed by it (private keys 0600)."""
    from fedsys.cli import guarded
    from fedsys.deploy.certs import CertPaths, default_ca_dir, init_certs

    def _run() -> None:
        ca = ca_dir or default_ca_dir(directory)
        paths = init_certs(
            directory,
            server_host=server_host,
            ca_dir=ca,
            server_ips=server_ip or (),
            loopback=loopback,
            valid_days=days,
            force=force,
        )
        _echo(f"CA certificate (give to data holders): {paths.ca_cert}")
        _echo(f"CA key: {CertPaths(ca).ca_key}; move {ca} offline now (e.g. to removable media);")
        _echo("  it is needed only to issue a new server certificate; the server refuses to start beside it")
        _echo(f"SuperLink certificate and key: {paths.server_cert}, {paths.server_key}")

    guarded(_run)


@certs_app.command("node")
def certs_node(
    directory: Annotated[Path, typer.Argument(help="The certificate directory (holds the allowlist).")],
    name: Annotated[str, typer.Argument(help="Node name, e.g. hospital-a.")],
    force: Annotated[bool, typer.Option(help="Replace an existing key pair / allowlist entry.")] = False,
) -> None:
    """Trials only: make a node's key pair on this machine and allowlist it (use keygen + allow instead)."""
    from fedsys.cli import guarded
    from fedsys.deploy.certs import create_node_key

    def _run() -> None:
        node = create_node_key(directory, name, force=force)
        _echo("note: this key was made on the operator's machine; for real data holders use")
        _echo("  `fedsys certs keygen` on the holder's machine and `fedsys certs allow` here")
        _echo(f"private key (give to {name} only, for --key): {node.private_key}")
        _echo(f"public key (allowlisted in {directory / 'authorized-nodes'}): {node.public_key}")

    guarded(_run)


@certs_app.command("keygen")
def certs_keygen(
    key: Annotated[Path, typer.Argument(help="Where to write this node's private key, e.g. node.key.")],
    name: Annotated[str, typer.Option(help="Node name, e.g. hospital-a (the key's comment).")],
    force: Annotated[bool, typer.Option(help="Replace an existing key pair.")] = False,
) -> None:
    """Data holder: make this node's key pair here; send only the .pub to the operator."""
    from fedsys.cli import guarded
    from fedsys.deploy.certs import generate_node_key

    def _run() -> None:
        node = generate_node_key(key, name=name, force=force)
        _echo(f"private key (stays on this machine, for `client start --key`): {node.private_key}")
        _echo(f"public key (send to the operator for `fedsys certs allow`): {node.public_key}")

    guarded(_run)


@certs_app.command("allow")
def certs_allow(
    directory: Annotated[Path, typer.Argument(help="The certificate directory (holds the allowlist).")],
    name: Annotated[str, typer.Argument(help="Node name.")],
    public_key: Annotated[Path, typer.Argument(help="The node's OpenSSH public key file (.pub).")],
    force: Annotated[bool, typer.Option(help="Replace an existing entry of that name.")] = False,
) -> None:
    """Allowlist a public key a data holder generated on its own machine."""
    from fedsys.cli import guarded
    from fedsys.deploy.certs import authorize_node
    from fedsys.errors import DeploymentError

    def _run() -> None:
        try:
            text = public_key.read_text(encoding="utf-8")
        except OSError as err:
            raise DeploymentError(f"cannot read {public_key}: {err}") from err
        authorize_node(directory, name, text, force=force)
        _echo(f"allowlisted {name}; restart `fedsys server start` (or it registers on next start)")

    guarded(_run)


@server_app.command("start")
def server_start(
    certs: Annotated[
        Path | None, typer.Option(help="Certificate directory from `fedsys certs init`.")
    ] = None,
    address: Annotated[str, typer.Option(help="Public HOST:PORT: the Fleet API (SuperNodes) only.")] = (
        "127.0.0.1:9093"
    ),
    local_port: Annotated[
        int, typer.Option(help="127.0.0.1 port of the SuperLink itself (Control, Runtime API); 0: any free.")
    ] = 0,
    state: Annotated[Path, _STATE] = Path("fedsys-state"),
    insecure: Annotated[bool, typer.Option(help="No TLS, no node auth: local trials only.")] = False,
    approve: Annotated[
        list[str] | None,
        typer.Option(
            help="FAB hash of an app this SuperLink may run (repeatable; default: the installed fedsys)."
        ),
    ] = None,
    pull_hold: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=25.0,
            help="Seconds the Fleet proxy holds a SuperNode's empty pull until a message arrives "
            "(0: answer at once; each then waits 3 s before its next pull).",
        ),
    ] = 20.0,
) -> None:
    """Run the SuperLink in the foreground: TLS, node authentication, persistent state, approved apps only."""
    from fedsys.cli import guarded
    from fedsys.deploy.app import build_app, check_fab_hash
    from fedsys.deploy.server import ServerOptions, start_server

    def _run() -> int:
        approved = [check_fab_hash(h) for h in approve] if approve else [build_app().fab_hash]
        options = ServerOptions(
            certs=certs,
            state=state,
            approved=approved,
            address=address,
            insecure=insecure,
            local_port=local_port,
            pull_hold=pull_hold,
        )
        return start_server(options, _echo)

    raise typer.Exit(guarded(_run))


@server_app.command("run")
def server_run(
    scenario: Annotated[Path | None, typer.Argument(help='Scenario TOML (dataset = "node").')] = None,
    resume: Annotated[
        Path | None, typer.Option(help="Continue this run directory from its checkpoint.")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Run directory (default: STATE/runs/<scenario>-<time>).")
    ] = None,
    state: Annotated[Path, _STATE] = Path("fedsys-state"),
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Any config key, e.g. --set num-rounds=5")
    ] = None,
    app: Annotated[
        Path | None, typer.Option(help="A staged fedsys app directory (default: the installed fedsys).")
    ] = None,
    detach: Annotated[bool, typer.Option(help="Return once the run is submitted.")] = False,
) -> None:
    """Submit a scenario to the SuperLink (flwr run) and follow it until it finishes."""
    from fedsys.cli import guarded, load_scenario
    from fedsys.config import RunConfig
    from fedsys.deploy.runs import deployment_config, submit_run
    from fedsys.errors import ConfigError, DeploymentError

    def _run() -> None:
        if resume is not None:
            base = scenario or resume / "config.toml"
            config = load_scenario(base, {}, set_ or [])
            run_dir = resume
        elif scenario is None:
            raise ConfigError("give a SCENARIO file, or --resume RUN_DIR")
        else:
            config = load_scenario(scenario, {}, set_ or [])
            run_dir = out or state / "runs" / f"{scenario.stem}-{time.strftime('%Y%m%d-%H%M%S')}"
        final: RunConfig = deployment_config(config, run_dir=run_dir, resume=resume is not None)
        result = submit_run(final, state=state, sink=_echo, app_dir=app, follow=not detach)
        _echo(f"run {result.run_id}: {result.status} after {result.seconds:.1f} s")
        if not detach and not result.ok:
            raise DeploymentError(f"run {result.run_id} ended {result.status}; see the log above")
        typer.echo(str(result.run_dir))

    guarded(_run)


@client_app.command("start")
def client_start(
    superlink: Annotated[str, typer.Option(help="SuperLink HOST:PORT.")],
    data: Annotated[Path, typer.Option(help="This data holder's CSV/Parquet/NPZ file.")],
    ledger: Annotated[Path, typer.Option(help="Privacy ledger (SQLite) of this data holder.")],
    max_epsilon: Annotated[float, typer.Option(help="This data holder's total privacy budget ε.")],
    target_delta: Annotated[float, typer.Option(help="δ of the budget.")] = 1e-5,
    ca: Annotated[Path | None, typer.Option(help="The federation's CA certificate (ca.crt).")] = None,
    key: Annotated[
        Path | None, typer.Option(help="This node's private key (from `fedsys certs node`).")
    ] = None,
    label_column: Annotated[str, typer.Option(help="Label column of the data file.")] = "label",
    num_classes: Annotated[int, typer.Option(help="Number of classes (0: infer from the labels).")] = 0,
    budget_policy: Annotated[str, typer.Option(help="refuse | truncate a round that would exceed ε.")] = (
        "refuse"
    ),
    device: Annotated[str, typer.Option(help="auto | cpu | cuda.")] = "auto",
    home: Annotated[Path, typer.Option(help="Node directory (FLWR_HOME, secret, log).")] = Path(
        "fedsys-node"
    ),
    runtime_port: Annotated[int, typer.Option(help="Loopback port of the local Runtime API (0: any).")] = 0,
    approve: Annotated[
        list[str] | None,
        typer.Option(help="Approved app FAB hash (repeatable; default: the installed fedsys app)."),
    ] = None,
    max_wait_time: Annotated[
        float | None, typer.Option(help="Give up reconnecting after this many seconds (default: never).")
    ] = None,
    insecure: Annotated[bool, typer.Option(help="No TLS: local trials only.")] = False,
    feature_range: Annotated[
        str,
        typer.Option(help='Public range of the data values: "LO,HI", a column,low,high .csv, or "none".'),
    ] = "",
    require_secagg: Annotated[
        bool,
        typer.Option(
            "--require-secagg/--allow-plaintext",
            help="Refuse rounds whose update would leave in the clear (default) or allow them.",
        ),
    ] = True,
    min_cohort: Annotated[
        int, typer.Option(help="Fewest clients whose sum this holder lets the server learn.")
    ] = 2,
    max_rounds_per_run: Annotated[
        int, typer.Option(help="Refuse rounds of a run beyond this many (0: no limit).")
    ] = 0,
    share_epsilon: Annotated[
        bool, typer.Option(help="Tell the server this holder's cumulative ε (it reveals the data size).")
    ] = False,
    share_evaluation: Annotated[
        str,
        typer.Option(
            help="Where this holder's federated-evaluation sums may go: secure (only inside SecAgg+), "
            "plain (also in plaintext replies) or none."
        ),
    ] = "secure",
    dataset_name: Annotated[
        str, typer.Option(help="Name of this data set, its budget's key (keep it when the data changes).")
    ] = "default",
    peers: Annotated[
        Path | None,
        typer.Option(
            help="The other data holders' identity public keys (OpenSSH .pub lines), exchanged and "
            "checked among the holders out of band; enables SecAgg+ against a malicious server."
        ),
    ] = None,
    require_malicious_secagg: Annotated[
        bool | None,
        typer.Option(
            "--require-malicious-secagg/--allow-semi-honest-secagg",
            help="Refuse SecAgg+ rounds that trust the server (default: required when --peers is given).",
        ),
    ] = None,
    local_noise_multiplier: Annotated[
        float,
        typer.Option(
            help="Distributed DP: the least noise this holder adds by itself (noise-multiplier units), "
            "so its vector alone stays DP if secure aggregation fails; 0: only its share."
        ),
    ] = 0.0,
) -> None:
    """Run this data holder's SuperNode: trains on --data, enforces --max-epsilon, runs only approved code."""
    from fedsys.cli import guarded
    from fedsys.deploy.app import build_app, check_fab_hash
    from fedsys.deploy.client import ClientOptions, start_client

    def _run() -> int:
        approved = [check_fab_hash(h) for h in approve] if approve else [build_app().fab_hash]
        options = ClientOptions(
            superlink=superlink,
            ca_cert=ca,
            key=key,
            data=data,
            label_column=label_column,
            max_epsilon=max_epsilon,
            target_delta=target_delta,
            ledger=ledger,
            home=home,
            approved=approved,
            num_classes=num_classes,
            budget_policy=budget_policy,
            device=device,
            runtime_port=runtime_port,
            max_wait_time=max_wait_time,
            insecure=insecure,
            feature_range=feature_range,
            require_secagg=require_secagg,
            min_cohort=min_cohort,
            max_rounds_per_run=max_rounds_per_run,
            share_epsilon=share_epsilon,
            share_evaluation=share_evaluation,
            dataset_name=dataset_name,
            peers=peers,
            require_malicious_secagg=require_malicious_secagg,
            local_noise_multiplier=local_noise_multiplier,
        )
        return start_client(options, _echo)

    raise typer.Exit(guarded(_run))


@client_app.command("app-hash")
def client_app_hash() -> None:
    """Print the FAB hash of the installed fedsys app (what `client start` approves by default)."""
    from fedsys.cli import guarded
    from fedsys.deploy.app import build_app

    typer.echo(guarded(build_app).fab_hash)


@demo_app.command("deploy")
def demo_deploy(
    rounds: Annotated[int, typer.Option(help="Rounds to run.")] = 2,
    holders: Annotated[int, typer.Option(help="Data holders (SuperNodes): 2 or 3.")] = 2,
    out: Annotated[
        Path | None, typer.Option(help="Empty directory for everything (default: a new temporary one).")
    ] = None,
    secagg: Annotated[bool, typer.Option("--secagg/--no-secagg", help="SecAgg+ on (default) or off.")] = True,
) -> None:
    """Start a TLS SuperLink and data holders on loopback with sample data, run, stop everything."""
    from fedsys.cli import guarded
    from fedsys.deploy.demo import DemoOptions, run_demo

    def _run() -> None:
        result = run_demo(DemoOptions(out=out, holders=holders, rounds=rounds, secagg=secagg), _echo)
        _echo(
            f"demo finished in {result.seconds:.0f} s; run directory (metrics.jsonl, model.pt, summary.json):"
        )
        typer.echo(str(result.run_dir))

    guarded(_run)
