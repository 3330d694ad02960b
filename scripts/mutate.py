"""Opt-in mutation testing for the SecAgg+ code: does some test fail when a check is broken?

Dependency-free (standard library only). Each mutant is one small edit to one source file:

  compare    swap a comparison operator (< <=, > >=, == !=, in / not in, is / is not)
  negate     negate the condition of an ``if``/``while``/``assert``/conditional expression
  true/false replace such a condition by ``True`` / ``False``
  boolop     swap ``and`` / ``or``
  arith      swap ``+`` / ``-`` in a binary operation
  raise      replace a ``raise`` statement by ``pass``
  call       replace a call statement (an expression statement that is a call) by ``pass``
  return     replace ``return <value>`` by ``return None``

The working tree is never touched: ``fedsys/``, ``tests/`` and ``pyproject.toml`` are copied into a
temporary directory, each mutant is written there, the chosen tests run against that copy (with
``PYTHONPATH`` pointing at it, so the editable install is shadowed) with ``-x`` and a timeout, and the
file is restored before the next mutant. Tests that already fail on the unmutated copy are reported
and deselected, so a red baseline does not count every mutant as killed.

Usage (from the repository root; see ``scripts/mutate``):

    scripts/mutate                                  # 60 sampled mutants of fedsys/secagg + round code
    scripts/mutate --max 0 --list                   # list every mutant, run nothing
    scripts/mutate --files fedsys/secagg/client.py --max 0 --match _check_setup
    scripts/mutate --files fedsys/coordinator/secure.py --tests tests/unit/secagg tests/unit/node
    scripts/mutate --rev HEAD                       # the committed code, while others edit the tree

Exit status: 0, or 1 with ``--fail-on-survivors`` when a mutant survived.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TESTS = ["tests/unit/secagg"]
ROUND_CODE = ["fedsys/coordinator/secure.py"]
COPIED = ["fedsys", "tests", "pyproject.toml"]
_SWAP = {
    ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq, ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is,
}  # fmt: skip


@dataclass(frozen=True)
class Mutant:
    """One edit: replace bytes [start, end) of ``path`` with ``replacement``."""

    path: str
    line: int
    operator: str
    description: str
    start: int
    end: int
    replacement: str

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


class _Collector(ast.NodeVisitor):
    """Walks one module and proposes mutants as byte-range replacements of its source."""

    def __init__(self, path: str, source: bytes) -> None:
        self.path, self.source = path, source
        self.line_starts = [0]
        for line in source.splitlines(keepends=True):
            self.line_starts.append(self.line_starts[-1] + len(line))
        self.mutants: list[Mutant] = []
        self.function = "<module>"

    def _span(self, node: ast.AST) -> tuple[int, int]:
        start = self.line_starts[node.lineno - 1] + node.col_offset  # type: ignore[attr-defined]
        end = self.line_starts[node.end_lineno - 1] + node.end_col_offset  # type: ignore[attr-defined]
        return start, end

    def _text(self, node: ast.AST) -> str:
        start, end = self._span(node)
        return self.source[start:end].decode()

    def _add(self, node: ast.AST, operator: str, replacement: str, what: str) -> None:
        start, end = self._span(node)
        original = " ".join(self._text(node).split())
        if len(original) > 60:
            original = original[:57] + "..."
        description = f"{self.function}: {what} [{original}]"
        self.mutants.append(Mutant(self.path, node.lineno, operator, description, start, end, replacement))  # type: ignore[attr-defined]

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        outer, self.function = self.function, node.name
        for statement in node.body:  # skip the docstring, visit the rest
            if not (isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant)):
                self.visit(statement)
        for decorator in node.decorator_list:
            self.visit(decorator)
        self.function = outer

    visit_AsyncFunctionDef = visit_FunctionDef  # noqa: N815

    def _condition(self, test: ast.expr) -> None:
        if isinstance(test, ast.Name) and test.id == "TYPE_CHECKING":
            return
        text = self._text(test)
        self._add(test, "negate", f"(not ({text}))", "negate condition")
        if not (isinstance(test, ast.Constant) and test.value is True):
            self._add(test, "true", "(True)", "condition -> True")
        self._add(test, "false", "(False)", "condition -> False")

    def visit_If(self, node: ast.If) -> None:
        self._condition(node.test)
        self.generic_visit(node)

    def visit_While(self, node: ast.While) -> None:
        self._condition(node.test)
        self.generic_visit(node)

    def visit_IfExp(self, node: ast.IfExp) -> None:
        self._condition(node.test)
        self.generic_visit(node)

    def visit_Compare(self, node: ast.Compare) -> None:
        for i, op in enumerate(node.ops):
            swapped = _SWAP.get(type(op))
            if swapped is None:
                continue
            mutated = ast.Compare(left=node.left, ops=list(node.ops), comparators=node.comparators)
            mutated.ops[i] = swapped()
            new = ast.unparse(mutated)
            self._add(node, "compare", f"({new})", f"{_op(op)} -> {_op(swapped())}")
        self.generic_visit(node)

    def visit_BoolOp(self, node: ast.BoolOp) -> None:
        other = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        self._add(node, "boolop", f"({ast.unparse(ast.BoolOp(op=other, values=node.values))})", "and <-> or")
        self.generic_visit(node)

    def visit_BinOp(self, node: ast.BinOp) -> None:
        if isinstance(node.op, ast.Add | ast.Sub) and not _is_string(node):
            other = ast.Sub() if isinstance(node.op, ast.Add) else ast.Add()
            new = ast.unparse(ast.BinOp(left=node.left, op=other, right=node.right))
            self._add(node, "arith", f"({new})", "+ <-> -")
        self.generic_visit(node)

    def visit_Raise(self, node: ast.Raise) -> None:
        self._add(node, "raise", "pass", "drop raise")

    def visit_Expr(self, node: ast.Expr) -> None:
        if isinstance(node.value, ast.Call):
            self._add(node, "call", "pass", "drop call")
        self.generic_visit(node)

    def visit_Return(self, node: ast.Return) -> None:
        if node.value is not None and not (isinstance(node.value, ast.Constant) and node.value.value is None):
            self._add(node, "return", "return None", "return None")
        self.generic_visit(node)


def _op(op: ast.cmpop) -> str:
    return ast.unparse(ast.Compare(left=ast.Name("a"), ops=[op], comparators=[ast.Name("b")]))[2:-2]


def _is_string(node: ast.BinOp) -> bool:
    return any(isinstance(side, ast.Constant | ast.JoinedStr) and isinstance(getattr(side, "value", ""), str)
               for side in (node.left, node.right))  # fmt: skip


def collect(root: Path, files: list[str]) -> list[Mutant]:
    """Every syntactically valid mutant of ``files`` (paths relative to ``root``)."""
    mutants = []
    for relative in files:
        source = (root / relative).read_bytes()
        collector = _Collector(relative, source)
        collector.visit(ast.parse(source))
        for mutant in collector.mutants:
            try:
                ast.parse(apply(source, mutant))
            except SyntaxError:
                continue
            mutants.append(mutant)
    return mutants


def _rank(mutant: Mutant, seed: int) -> bytes:
    """A reproducible pseudo-random order for sampling (no ``random``: the repo bans it)."""
    return hashlib.sha256(f"{seed}:{mutant.path}:{mutant.start}:{mutant.operator}".encode()).digest()


def _position(mutant: Mutant) -> tuple[str, int]:
    return mutant.path, mutant.start


def apply(source: bytes, mutant: Mutant) -> bytes:
    return source[: mutant.start] + mutant.replacement.encode() + source[mutant.end :]


def run_tests(
    workdir: Path, tests: list[str], skip: list[str], timeout: float, *, first_failure: bool = True
) -> tuple[str, str]:
    """Run pytest in ``workdir``; returns (outcome, output tail), outcome in passed/failed/timeout."""
    env = dict(os.environ, PYTHONPATH=str(workdir), PYTHONDONTWRITEBYTECODE="1")
    env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    env.setdefault("HF_DATASETS_OFFLINE", "1")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE", "--no-header"]
    command += ["-x"] if first_failure else []
    command += [f"--deselect={n}" if "::" in n else f"--ignore={n}" for n in skip] + tests
    process = subprocess.Popen(
        command,
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        return "timeout", ""
    text = output.decode(errors="replace")
    return ("passed" if process.returncode == 0 else "failed"), text[-20000:]


def _failing(output: str) -> list[str]:
    """Failed test ids and modules that failed to import, from pytest's short summary."""
    return re.findall(r"^(?:FAILED|ERROR) (\S+?)(?:::)?(?: - .*)?$", output, flags=re.MULTILINE)


def _baseline(workdir: Path, tests: list[str], timeout: float) -> list[str]:
    """Tests (or test modules) that fail on the unmutated copy; they are skipped for every mutant."""
    skip: list[str] = []
    for _ in range(5):
        outcome, output = run_tests(workdir, tests, skip, timeout, first_failure=False)
        if outcome == "passed":
            return skip
        failing = [n for n in _failing(output) if n not in skip]
        if outcome == "timeout" or not failing:
            raise SystemExit(f"baseline test run does not pass and names no failing test:\n{output[-3000:]}")
        skip += failing
    raise SystemExit("baseline: still failing after skipping the failures of five runs")


def _copy_tree(workdir: Path, rev: str | None) -> None:
    """Copy fedsys/, tests/ and pyproject.toml; with ``rev``, fedsys/ and pyproject.toml from that commit."""
    from_git = ["fedsys", "pyproject.toml"] if rev else []
    if rev:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", "--format=tar", rev, *from_git],
            check=True,
            capture_output=True,
        ).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(workdir, filter="data")
    for name in COPIED:
        source = ROOT / name
        if name in from_git:
            continue
        if source.is_dir():
            shutil.copytree(source, workdir / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, workdir / name)


def _default_files(tree: Path) -> list[str]:
    files = sorted(p.relative_to(tree).as_posix() for p in (tree / "fedsys" / "secagg").glob("*.py"))
    return files + [f for f in ROUND_CODE if (tree / f).exists()]


def _select(mutants: list[Mutant], args: argparse.Namespace) -> list[Mutant]:
    if args.operators:
        mutants = [m for m in mutants if m.operator in args.operators]
    if args.match:
        mutants = [m for m in mutants if re.search(args.match, f"{m.where} {m.description}")]
    total = len(mutants)
    if args.max and total > args.max:
        mutants = sorted(sorted(mutants, key=lambda m: _rank(m, args.seed))[: args.max], key=_position)
    print(f"{len(mutants)} of {total} mutants selected from {len({m.path for m in mutants})} file(s)")
    return mutants


def _run_all(
    workdir: Path, mutants: list[Mutant], tests: list[str], deselect: list[str], timeout: float
) -> list[dict[str, object]]:
    results: list[dict[str, object]] = []
    originals = {path: (workdir / path).read_bytes() for path in {m.path for m in mutants}}
    for index, mutant in enumerate(mutants, 1):
        target = workdir / mutant.path
        target.write_bytes(apply(originals[mutant.path], mutant))
        started = time.monotonic()
        try:
            outcome, output = run_tests(workdir, tests, deselect, timeout)
        finally:
            target.write_bytes(originals[mutant.path])
        status = {"passed": "SURVIVED", "failed": "killed", "timeout": "killed (timeout)"}[outcome]
        killer = (_failing(output) or [""])[0]
        elapsed = time.monotonic() - started
        print(f"[{index:3}/{len(mutants)}] {status:16} {mutant.where:40} {mutant.description}"
              f"{'  <- ' + killer if killer else ''}  ({elapsed:.1f}s)", flush=True)  # fmt: skip
        results.append({**asdict(mutant), "status": status, "killed_by": killer})
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", nargs="+", help="sources to mutate (default: fedsys/secagg + round code)")
    parser.add_argument("--tests", nargs="+", default=DEFAULT_TESTS, help="pytest paths run per mutant")
    parser.add_argument("--max", type=int, default=60, help="sample this many mutants (0: all)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (reproducible runs)")
    parser.add_argument("--operators", nargs="+", help="only these operators (compare, raise, ...)")
    parser.add_argument("--match", help="only mutants whose location or description matches this regex")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per mutant test run")
    parser.add_argument("--rev", help="mutate fedsys/ as of this git commit (tests still from the tree)")
    parser.add_argument("--list", action="store_true", help="list the selected mutants and exit")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--fail-on-survivors", action="store_true")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="fedsys-mutate-") as tmp:
        workdir = Path(tmp)
        _copy_tree(workdir, args.rev)  # first, so that mutants are computed on exactly what is tested
        files = args.files or _default_files(workdir)
        mutants = _select(collect(workdir, files), args)
        if args.list:
            for m in mutants:
                print(f"  {m.where:40} {m.operator:8} {m.description}")
            return 0
        deselect = _baseline(workdir, args.tests, args.timeout * 3)
        for nodeid in deselect:
            print(f"baseline failure, skipped for every mutant: {nodeid}")
        results = _run_all(workdir, mutants, args.tests, deselect, args.timeout)

    survivors = [r for r in results if r["status"] == "SURVIVED"]
    print(f"\n{len(results)} mutants: {len(results) - len(survivors)} killed, {len(survivors)} survived")
    for r in survivors:
        print(f"  SURVIVED {r['path']}:{r['line']} {r['description']}")
    if args.json:
        args.json.write_text(json.dumps({"deselected": deselect, "results": results}, indent=2))
    return 1 if survivors and args.fail_on_survivors else 0


if __name__ == "__main__":
    raise SystemExit(main())
