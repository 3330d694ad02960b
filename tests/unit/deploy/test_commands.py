"""The certs / server / client commands: files, one-line errors, exit code 2."""

from typer.testing import CliRunner

from fedsys.cli import app

runner = CliRunner()


def test_certs_init_then_node_then_refuse_to_overwrite(tmp_path):
    first = runner.invoke(
        app, ["certs", "init", str(tmp_path), "--server-host", "link.example", "--server-ip", "10.1.2.3"]
    )
    node = runner.invoke(app, ["certs", "node", str(tmp_path), "hospital-a"])
    again = runner.invoke(app, ["certs", "init", str(tmp_path), "--server-host", "link.example"])

    assert first.exit_code == 0 and node.exit_code == 0, first.output + node.output
    assert (tmp_path / "nodes" / "hospital-a.key").is_file()
    assert again.exit_code == 2 and "ca.crt already exists (use --force to replace it)" in again.output
    assert "Traceback" not in again.output


def test_certs_allow_adds_a_key_made_elsewhere(tmp_path):
    runner.invoke(app, ["certs", "node", str(tmp_path / "theirs"), "site"])

    result = runner.invoke(
        app,
        ["certs", "allow", str(tmp_path / "ours"), "site", str(tmp_path / "theirs" / "nodes" / "site.pub")],
    )

    assert result.exit_code == 0, result.output
    assert (tmp_path / "ours" / "authorized-nodes").read_text().endswith(" site\n")


def test_server_run_wants_node_data_and_a_connection(tmp_path):
    scenario = tmp_path / "s.toml"
    scenario.write_text('dataset = "digits"\n')
    wrong = runner.invoke(app, ["server", "run", str(scenario), "--state", str(tmp_path / "st")])
    scenario.write_text('dataset = "node"\nfeature-shape = "30"\nnum-classes = 2\n')
    no_link = runner.invoke(app, ["server", "run", str(scenario), "--state", str(tmp_path / "st")])
    nothing = runner.invoke(app, ["server", "run"])

    assert wrong.exit_code == 2 and 'set dataset = "node"' in wrong.output
    assert no_link.exit_code == 2 and "no SuperLink connection in" in no_link.output
    assert nothing.exit_code == 2 and "give a SCENARIO file, or --resume RUN_DIR" in nothing.output


def test_client_app_hash_prints_the_installed_apps_fab_hash():
    result = runner.invoke(app, ["client", "app-hash"])

    assert result.exit_code == 0 and len(result.output.strip()) == 64
