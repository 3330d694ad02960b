"""Source check: secagg draws secrets only from os.urandom / secrets / cryptography, never `random`."""

from __future__ import annotations

import re
from pathlib import Path

import fedsys.secagg

SECAGG_DIR = Path(fedsys.secagg.__file__).parent
FORBIDDEN = [
    re.compile(r"^\s*import\s+random\b", re.MULTILINE),
    re.compile(r"^\s*from\s+random\s+import\b", re.MULTILINE),
    re.compile(r"\b(?:np|numpy)\.random\.(?!Generator\b)\w+"),  # only the Generator type is allowed
    re.compile(r"^\s*from\s+numpy\.random\s+import\b", re.MULTILINE),
    re.compile(r"^\s*import\s+numpy\.random\b", re.MULTILINE),
    re.compile(r"\bdefault_rng\s*\("),
    re.compile(r"\bRandomState\b"),
    re.compile(r"\brandom\.(?:seed|random|randint|randrange|choice|shuffle|sample|getrandbits)\s*\("),
]


def _violations(source: str) -> list[str]:
    return [match.group(0) for pattern in FORBIDDEN for match in pattern.finditer(source)]


def test_secagg_sources_use_no_insecure_randomness() -> None:
    files = sorted(SECAGG_DIR.glob("*.py"))

    found = {path.name: _violations(path.read_text()) for path in files}

    assert len(files) >= 10
    assert {name: hits for name, hits in found.items() if hits} == {}


def test_the_only_numpy_random_use_is_the_generator_type() -> None:
    uses = {m for path in SECAGG_DIR.glob("*.py") for m in re.findall(r"np\.random\.\w+", path.read_text())}

    assert uses == {"np.random.Generator"}


def test_the_check_catches_each_forbidden_form() -> None:
    samples = [
        "import random",
        "from random import choice",
        "x = np.random.default_rng(0)",
        "np.random.seed(1)",
        "numpy.random.rand(3)",
        "from numpy.random import default_rng",
        "import numpy.random",
        "rs = RandomState(0)",
        "random.shuffle(ids)",
    ]

    assert all(_violations(sample) for sample in samples)
    assert not _violations("def f(rng: np.random.Generator) -> None: secrets.SystemRandom().shuffle(ids)")
