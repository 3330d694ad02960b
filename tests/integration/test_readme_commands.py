"""The README's command blocks still work, so the documentation cannot drift from the code.

Every ```bash block is parsed: each ``fedsys`` call must be spelled ``.venv/bin/fedsys`` (what
the setup creates), name an existing subcommand, and use only options that subcommand has
(click parses its arguments); every ``simulations/*.toml`` and ``bash`` script it names exists.
A block preceded by the line ``<!-- test: run -->`` is also run, command by command, from the
repository root, and each command must exit 0 within ``RUN_TIMEOUT`` seconds.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest
import typer.main

from fedsys.cli import app

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
RUN_MARK = "<!-- test: run -->"
RUN_TIMEOUT = 240  # the deployment demo on 2 busy CI cores; ~40 s on idle ones
FENCE = re.compile(r"^```bash\n(.*?)^```", re.MULTILINE | re.DOTALL)

pytestmark = pytest.mark.integration


def blocks(text: str) -> list[tuple[int, bool, list[str]]]:
    """(line number, marked runnable, commands) of every bash block; continuations joined."""
    found = []
    for match in FENCE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
        joined = match[1].replace("\\\n", " ")
        commands = [c for c in joined.splitlines() if c.strip() and not c.lstrip().startswith("#")]
        found.append((line, before == RUN_MARK, commands))
    return found


def fedsys_calls(command: str) -> list[list[str]]:
    """The argument lists of every fedsys call in one shell line (``&&``-joined parts too)."""
    calls = []
    for part in command.split("&&"):
        words = [w.strip("[]") for w in shlex.split(part, comments=True)]
        if words and words[0].endswith("fedsys"):
            calls.append(words)
    return calls


def check_call(words: list[str]) -> str:
    """Empty if ``words`` is a valid fedsys invocation, else what is wrong with it."""
    if words[0] != ".venv/bin/fedsys":
        return f"call {words[0]!r}: the README's commands use .venv/bin/fedsys"
    command: click.Command = typer.main.get_command(app)
    args = words[1:]
    while isinstance(command, click.Group) and args and args[0] in command.commands:
        command, args = command.commands[args[0]], args[1:]
    if isinstance(command, click.Group):
        return f"no such fedsys subcommand: {' '.join(words[1:3])}"
    if "--help" in args:
        return ""
    try:
        command.make_context(command.name or "", list(args))
    except click.NoSuchOption as err:
        return f"{' '.join(words[:4])}: {err.format_message()}"
    except click.UsageError:
        pass  # a placeholder value (RUN_DIR), a required option shown elsewhere: all fine
    return ""


def _all_blocks() -> list[tuple[int, bool, list[str]]]:
    return blocks(README.read_text(encoding="utf-8"))


def test_the_readme_has_runnable_and_fedsys_blocks():
    found = _all_blocks()

    assert any(runnable for _, runnable, _ in found)
    assert sum(len(fedsys_calls(c)) for _, _, commands in found for c in commands) >= 20


def test_every_fedsys_command_in_the_readme_parses():
    problems = []
    for line, _, commands in _all_blocks():
        for command in commands:
            problems += [f"README.md:{line}: {p}" for w in fedsys_calls(command) if (p := check_call(w))]
            for path in re.findall(r"(?:simulations/[\w.-]+\.toml|scripts/\w+)", command):
                if not (ROOT / path).exists():
                    problems.append(f"README.md:{line}: {path} does not exist")

    assert problems == []


def test_a_wrong_command_is_caught():
    assert check_call(["fedsys", "simulate"])  # bare fedsys
    assert check_call([".venv/bin/fedsys", "simulat"])
    assert check_call([".venv/bin/fedsys", "privacy", "plan", "--no-such-flag"])
    assert check_call([".venv/bin/fedsys", "demo", "deploy", "--rounds", "2"]) == ""


def _runnable() -> list[tuple[int, str]]:
    return [(line, c) for line, runnable, commands in _all_blocks() if runnable for c in commands]


@pytest.mark.slow
@pytest.mark.parametrize(("line", "command"), _runnable(), ids=lambda v: str(v)[:40])
def test_a_marked_readme_command_runs(line, command, tmp_path):
    # TMPDIR: what a command makes in a new temporary directory (the demo's) stays in tmp_path
    env = dict(os.environ, FLWR_TELEMETRY_ENABLED="0", PYTHONUNBUFFERED="1", TMPDIR=str(tmp_path))
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    started = time.monotonic()

    result = subprocess.run(
        ["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT
    )

    output = (result.stdout + result.stderr)[-3000:]
    assert result.returncode == 0, f"README.md:{line}: {command}\n{output}"
    print(f"\n[README.md:{line}] {time.monotonic() - started:.1f} s: {command}")
