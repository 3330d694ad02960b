"""Every number report.md and report.json show agrees with the run's own records: the clients'
ledgers, metrics.jsonl, summary.json and config.toml, each read here independently (issue 15)."""

import json
import statistics

import pytest
from report_builders import RUN_ID, round_record, spend

from fedsys import results
from fedsys.config import RunConfig
from fedsys.privacy import PrivacyLedger
from fedsys.report.document import write_report
from fedsys.report.runs import load_run

TARGET = 8.0
STEPS = 7
# (sampling rate, noise multiplier) the three holders of `fedsys simulate simulations/digits.toml
# --target-epsilon 8 --num-clients 3 --rounds 2` calibrated and recorded in their ledgers
# (fedsys.node.update: Opacus' get_noise_multiplier for 2 x 7 steps at delta 1e-5, rdp)
HOLDERS = ((1 / 7, 0.78277587890625), (1 / 6, 0.8054351806640625), (1 / 7, 0.78277587890625))


def _simulated_run(path):
    """Round 1: all three train; round 2: holders 0 and 1; round 3 abandoned (nothing spent)."""
    config = RunConfig().replace(
        {"num-rounds": 3, "dp.target-epsilon": TARGET, "budget.max-epsilon": TARGET, "secagg.enabled": False}
    )
    results.write_config(path, config.resolved())
    spent: dict[int, list[float]] = {1: [], 2: []}
    for client, (rate, sigma) in enumerate(HOLDERS):
        rounds = [1, 2] if client < 2 else [1]
        ledger = path / "ledgers" / f"client-{client:05d}.sqlite"
        after = spend(ledger, rounds, steps=STEPS, noise_multiplier=sigma, sample_rate=rate)
        for rnd, eps in zip(rounds, after, strict=True):
            spent[rnd].append(eps)
    records = []
    for rnd, sampled in ((1, 3), (2, 2)):
        eps = spent[rnd]
        extra = {"epsilon-min": min(eps), "epsilon-median": statistics.median(eps), "epsilon-max": max(eps)}
        records.append(round_record(rnd, **{"clients-sampled": sampled, "round-seconds": 9.0 / rnd}, **extra))
    records.append(round_record(3, status="abandoned", **{"clients-sampled": 2, "clients-succeeded": 0}))
    results.rewrite_metrics(path, records)
    summary = {
        "run-id": RUN_ID,
        "rounds-completed": 2,
        "rounds-abandoned": 1,
        "rounds-planned": 3,
        "simulated": True,
        "clients-seen": 3,
        "epsilon-max": max(r.get("epsilon-max", 0.0) for r in records),
    }
    results.write_summary(path, summary)
    return path


def _ledgers(run_dir, run_id):
    """(noise multipliers of the run's entries, every summary's epsilon, deltas), from the ledgers."""
    sigmas, finals, deltas = set(), [], set()
    for path in sorted((run_dir / "ledgers").glob("client-*.sqlite")):
        with PrivacyLedger(path) as ledger:
            for summary in ledger.summary():
                finals.append(summary.epsilon)
                deltas.add(summary.target_delta)
                entries = ledger.entries(summary.budget_key)
                sigmas |= {e.noise_multiplier for e in entries if e.run_id == run_id and e.steps > 0}
    return sorted(sigmas), finals, deltas


def _table_row(markdown: str, header_start: str, run_name: str) -> dict[str, str]:
    lines = markdown.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    header = [c.strip() for c in lines[at].strip("|").split("|")]
    rows = (line for line in lines[at + 2 :] if line.startswith("|"))
    row = next(r for r in rows if r.split("|")[1].strip() == run_name)
    return dict(zip(header, (c.strip() for c in row.strip("|").split("|")), strict=True))


def assert_report_agrees_with_the_run(run_dir, out):
    """Check report.md and report.json of ``run_dir`` against its ledgers, metrics, summary, config."""
    records = results.read_metrics(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    config = RunConfig.from_toml(run_dir / "config.toml")
    sigmas, finals, deltas = _ledgers(run_dir, summary["run-id"])
    ok = sum(r["status"] == "ok" for r in records)
    abandoned = sum(r["status"] == "abandoned" for r in records)
    sampled = sorted({r["clients-sampled"] for r in records})
    markdown = (out / "report.md").read_text()
    (row,) = json.loads((out / "report.json").read_text())["runs"]
    cells = _table_row(markdown, "| run | data / model", run_dir.name)
    runtime = _table_row(markdown, "| run | updates", run_dir.name)

    assert config.partition == config.resolved_partition() != "auto"
    assert (summary["rounds-completed"], summary["rounds-abandoned"]) == (ok, abandoned)
    assert summary["epsilon-max"] == pytest.approx(max(finals), rel=1e-9)
    assert row["noise-multipliers"] == sigmas and row["final-epsilon"] == max(finals)
    assert row["target-delta"] == deltas.pop() and not deltas
    assert row["budget-max-epsilon"] == config.budget.max_epsilon
    per_round = f"{sampled[0]}" if len(sampled) == 1 else f"{sampled[0]}–{sampled[-1]}"
    assert cells["clients"] == f"{summary['clients-seen']} ({per_round} per round)"
    assert cells["rounds"] == f"{ok}/{summary['rounds-planned']}" + (
        f", {abandoned} abandoned" if abandoned else ""
    )
    sigma = f"σ {sigmas[0]:.4g}" + (f"–{sigmas[-1]:.4g}" if len(sigmas) > 1 else "")
    assert cells["DP-SGD"] == f"{sigma}, C {config.dp.max_grad_norm:.4g}"
    assert cells["budget max ε"] == f"{config.budget.max_epsilon:.4g}"
    assert cells["final accuracy"] == f"{100 * records[-1]['accuracy']:.2f}%"
    assert cells["final macro-F1"] == f"{records[-1]['macro-f1']:.4g}"
    assert cells["final loss"] == f"{records[-1]['loss']:.4g}"
    assert cells["final ε (max over clients)"] == f"{max(finals):.4g}"
    totals = [sum(r[k] for r in records) for k in ("clients-succeeded", "clients-failed", "clients-declined")]
    assert runtime["updates ok / failed / declined"] == "{} / {} / {}".format(*totals)
    assert runtime["round 1 (s)"] == f"{records[0]['round-seconds']:.4g}"
    later = statistics.median(r["round-seconds"] for r in records[1:])
    assert runtime["later rounds, median (s)"] == f"{later:.4g}"


def test_every_number_of_the_report_comes_from_the_ledgers_metrics_summary_and_config(tmp_path):
    run_dir = _simulated_run(tmp_path / "run")

    write_report([load_run(run_dir)], tmp_path / "out")

    assert_report_agrees_with_the_run(run_dir, tmp_path / "out")


def test_holders_calibrated_their_own_noise_so_the_scenario_default_is_not_reported(tmp_path):
    run_dir = _simulated_run(tmp_path / "run")

    row = json.loads((write_report([load_run(run_dir)], tmp_path / "out").numbers).read_text())["runs"][0]

    assert RunConfig.from_toml(run_dir / "config.toml").dp.noise_multiplier == 1.0  # unused default
    assert row["dp"] == "σ 0.7828–0.8054, C 1"
    assert row["noise-multipliers"] == [0.78277587890625, 0.8054351806640625]


def test_without_ledgers_a_simulated_run_names_the_target_not_a_multiplier(tmp_path):
    run_dir = _simulated_run(tmp_path / "run")
    for ledger in (run_dir / "ledgers").iterdir():
        ledger.unlink()

    row = json.loads((write_report([load_run(run_dir)], tmp_path / "out").numbers).read_text())["runs"][0]

    assert row["dp"] == "σ set by each holder for ε 8, C 1"
    assert row["target-delta"] == 1e-5 and row["budget-max-epsilon"] == TARGET
