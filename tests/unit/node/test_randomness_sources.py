"""Source check over everything a data holder runs for privacy (fedsys/secagg, fedsys/node, fedsys/privacy):
secrets and DP randomness come from OS entropy; every seeded generator is allow-listed by name, with a reason.

An AST scan, so it sees through aliases the regex scan of fedsys/secagg alone would miss and knows which
function each use sits in. A generator seeded from ``secrets``/``os.urandom`` (or numpy's unseeded
``default_rng()``, which draws from the OS) is fine anywhere; any other seed, the stdlib ``random``
module, numpy's legacy global RNG, torch's global RNG and an unseeded ``torch.Generator()`` (a fixed
default seed) are violations unless their function is in ``ALLOWED``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import torch

import fedsys
from fedsys.config import BudgetConfig, RunConfig
from fedsys.node.secure import _rounding_rng
from fedsys.node.settings import HolderSettings
from fedsys.node.update import _evaluation_rng, _simulation_generator

ROOT = Path(fedsys.__file__).parent
SCANNED = ("secagg", "node", "privacy")
ALLOWED = {
    "node/update.py::_simulation_generator": (
        "simulation only: returns None (fresh OS entropy downstream) unless the holder settings say "
        "this is a virtual client; pinned by a test below"
    ),
    "node/update.py::_evaluation_rng": (
        "DP noise on released federated-evaluation sums: seeded only for a simulated virtual client "
        "(reproducible runs); a real holder draws 128 bits of OS entropy; pinned by a test below"
    ),
    "node/secure.py::_rounding_rng": (
        "stochastic rounding of the SecAgg+ encoding needs unbiased, not secret, randomness (the self "
        "mask hides the result); OS-seeded at a real holder, pinned by a test below"
    ),
    "node/distributed.py::_generators": (
        "distributed DP: seeded only for a simulated virtual client (reproducible runs); a real holder's "
        "sampling and rounding are OS-seeded and its noise is ChaCha20 keyed from os.urandom; pinned by "
        "tests/unit/node/test_distributed_holder.py"
    ),
    "privacy/central.py::_generator": (
        "the central DP-SGD reference of sweeps and benchmarks pools simulated data on one machine; a "
        "seed makes its sampling and noise reproducible, without one it draws OS entropy"
    ),
    "privacy/central.py::_initial_model": (
        "the central reference starts from the coordinator's initial global model (the scenario seed, "
        "public weights the server sends anyway), in a forked RNG so nothing else is reseeded"
    ),
    "privacy/dpsgd.py::_split_generator": (
        "derives the sampling and noise generators from the generator passed in, which is None (OS "
        "entropy via entropy_generator) except in simulation"
    ),
}
_TORCH_GLOBAL_DRAWS = {
    "rand", "randn", "randint", "randperm", "normal", "bernoulli", "multinomial", "poisson",
    "rand_like", "randn_like", "randint_like",
}  # fmt: skip
_GLOBAL_MODULES = ("torch", "np", "numpy", "random")
_SEEDING = {"manual_seed", "manual_seed_all", "seed", "seed_all", "set_rng_state"}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    if isinstance(node, ast.Call):
        return f"{_dotted(node.func)}()"
    return "?"


def _os_entropy(args: list[ast.expr]) -> bool:
    """True if every argument is a call into ``secrets`` or ``os.urandom`` (possibly wrapped, e.g. int())."""
    for arg in args:
        calls = [n for n in ast.walk(arg) if isinstance(n, ast.Call)]
        names = {_dotted(call.func) for call in calls}
        if not any(name.startswith("secrets.") or name == "os.urandom" for name in names):
            return False
    return True


class _Scanner(ast.NodeVisitor):
    def __init__(self) -> None:
        self.scope: list[str] = []
        self.hits: list[tuple[str, str]] = []

    def _hit(self, what: str) -> None:
        self.hits.append((".".join(self.scope) or "<module>", what))

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> None:
        self.scope.append(node.name)
        self.generic_visit(node)
        self.scope.pop()

    visit_AsyncFunctionDef = visit_ClassDef = visit_FunctionDef  # noqa: N815

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name == "random" or alias.name.startswith("numpy.random"):
                self._hit(f"import {alias.name}")

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.module in ("random", "numpy.random", "torch.random"):
            self._hit(f"from {node.module} import ...")

    def visit_Attribute(self, node: ast.Attribute) -> None:
        name = _dotted(node)
        if name.startswith("random.") or "RandomState" in name:
            self._hit(name)
        if name.split(".")[0] in ("np", "numpy") and name.split(".")[1:2] == ["random"]:
            tail = name.split(".")[2:3]
            if tail and tail[0] not in ("Generator", "default_rng"):
                self._hit(name)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        name = _dotted(node.func)
        last = name.rsplit(".", 1)[-1]
        keywords = {k.arg for k in node.keywords}
        if last == "default_rng" and not _os_entropy(node.args):
            self._hit(f"{name}(<non-OS seed>)")
        elif last in _SEEDING and "()" not in name and name.split(".")[0] in _GLOBAL_MODULES:
            self._hit(f"{name}(...)")  # a process-global seed
        elif last in _SEEDING and not _os_entropy(node.args):
            self._hit(f"{name}(<non-OS seed>)")
        elif name in {f"torch.{f}" for f in _TORCH_GLOBAL_DRAWS} and "generator" not in keywords:
            self._hit(f"{name}(...) from torch's global generator")
        elif name == "torch.Generator" and not self._seeded_here(node):
            self._hit("torch.Generator() with its fixed default seed")
        self.generic_visit(node)

    def _seeded_here(self, node: ast.Call) -> bool:
        parent = getattr(node, "parent", None)
        return isinstance(parent, ast.Attribute) and parent.attr == "manual_seed"


def _scan(source: str) -> list[tuple[str, str]]:
    tree = ast.parse(source)
    for parent in ast.walk(tree):
        for child in ast.iter_child_nodes(parent):
            child.parent = parent  # type: ignore[attr-defined]
    scanner = _Scanner()
    scanner.visit(tree)
    return scanner.hits


def _all_hits() -> dict[str, list[str]]:
    hits: dict[str, list[str]] = {}
    for package in SCANNED:
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            for scope, what in _scan(path.read_text()):
                hits.setdefault(f"{relative}::{scope}", []).append(what)
    return hits


def test_every_package_a_holder_runs_is_scanned() -> None:
    files = {p.relative_to(ROOT).parts[0] for package in SCANNED for p in (ROOT / package).rglob("*.py")}

    assert files == set(SCANNED)
    assert len(list((ROOT / "node").glob("*.py"))) >= 5 and len(list((ROOT / "privacy").glob("*.py"))) >= 5


def test_no_seeded_or_global_randomness_outside_the_allow_list() -> None:
    hits = _all_hits()

    assert {where: what for where, what in hits.items() if where not in ALLOWED} == {}


def test_every_allow_list_entry_is_still_needed_and_has_a_reason() -> None:
    hits = _all_hits()

    assert all(hits.get(where) for where in ALLOWED), "stale allow-list entries hide nothing; remove them"
    assert all(len(reason) > 40 for reason in ALLOWED.values())


def test_the_scan_catches_each_forbidden_form() -> None:
    forbidden = [
        "import random",
        "from random import choice",
        "import numpy.random",
        "from numpy.random import default_rng",
        "x = random.random()",
        "rng = np.random.default_rng(config.seed)",
        "rng = numpy.random.default_rng([seed, 3])",
        "np.random.seed(1)",
        "np.random.rand(3)",
        "rs = np.random.RandomState(0)",
        "torch.manual_seed(server_round)",
        "torch.manual_seed(secrets.randbits(63))",  # still a process-global seed
        "torch.cuda.manual_seed_all(0)",
        "g = torch.Generator().manual_seed(int(message['seed']))",
        "g = torch.Generator(device='cpu')",
        "noise = torch.randn(3)",
        "idx = torch.randperm(10)",
        "def f(config):\n    return default_rng(config.seed)",
    ]
    allowed = [
        "def f(rng: np.random.Generator) -> None: ...",
        "rng = np.random.default_rng(secrets.randbits(128))",
        "rng = np.random.default_rng()",
        "g = torch.Generator(device=d).manual_seed(secrets.randbits(63))",
        "noise = torch.randn(3, generator=g)",
        "ids = secrets.SystemRandom().sample(population, 3)",
        "seed = os.urandom(32)",
    ]

    assert [sample for sample in forbidden if not _scan(sample)] == []
    assert {sample: _scan(sample) for sample in allowed if _scan(sample)} == {}
    assert _scan("def outer():\n    def inner():\n        torch.manual_seed(1)") == [
        ("outer.inner", "torch.manual_seed(...)")
    ]


def _holder(tmp_path: Path, partition_id: int | None) -> HolderSettings:
    return HolderSettings(
        budget=BudgetConfig(), ledger_path=tmp_path / "ledger.json", device="cpu", partition_id=partition_id
    )


def test_simulation_generator_is_none_at_a_real_holder_whatever_the_server_seed(tmp_path: Path) -> None:
    config = RunConfig().replace({"seed": 1234})

    real = _simulation_generator(config, _holder(tmp_path, partition_id=None), 3)
    virtual = _simulation_generator(config, _holder(tmp_path, partition_id=0), 3)

    assert real is None
    assert isinstance(virtual, torch.Generator)


def test_rounding_rng_at_a_real_holder_ignores_the_server_seed() -> None:
    draws = [_rounding_rng(1234, None, 3).integers(0, 2**62, 4) for _ in range(2)]
    simulated = [_rounding_rng(1234, 0, 3).integers(0, 2**62, 4) for _ in range(2)]

    assert not np.array_equal(draws[0], draws[1])
    np.testing.assert_array_equal(simulated[0], simulated[1])  # reproducible only for a virtual client


def test_evaluation_noise_at_a_real_holder_ignores_the_server_seed(tmp_path: Path) -> None:
    config = RunConfig().replace({"seed": 1234})

    real = [_evaluation_rng(config, _holder(tmp_path, None), 3).normal(size=4) for _ in range(2)]
    virtual = [_evaluation_rng(config, _holder(tmp_path, 0), 3).normal(size=4) for _ in range(2)]

    assert not np.array_equal(real[0], real[1])
    np.testing.assert_array_equal(virtual[0], virtual[1])  # reproducible only for a virtual client
