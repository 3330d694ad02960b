"""The fedsys Flower App Bundle (FAB): built the same way by the operator and by each data holder.

``flwr run`` ships the app code to the SuperLink as a FAB whose SHA-256 (the *FAB hash*)
identifies it; SuperNodes see that hash for every task. A data holder approves the hash of
the FAB built from *its own installed* fedsys, so it refuses any run whose code differs.

Both sides therefore need the same, reproducible FAB. It is synthesised from the installed
packages only (``fedsys``, ``server``, ``clients``, ``simulations``) plus a generated
``pyproject.toml`` whose ``[tool.flwr.app.config]`` lists every :class:`RunConfig` key
(``flwr run --run-config`` only accepts keys that the app declares). Tests, docs and the
checkout's own pyproject do not enter the hash.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import io
import re
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import tomli_w

from fedsys.config import RunConfig
from fedsys.errors import DeploymentError

APP_PACKAGES = ("fedsys", "server", "clients", "simulations")
_SUFFIXES = (".py", ".toml")
_HASH_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class AppBundle:
    """A built FAB and its hash."""

    fab: bytes
    fab_hash: str


def app_pyproject() -> dict[str, object]:
    """The pyproject.toml of the fedsys Flower app (deterministic for an installed version)."""
    return {
        "build-system": {"requires": ["setuptools>=68"], "build-backend": "setuptools.build_meta"},
        "project": {
            "name": "fedsys",
            "version": _installed_version(),
            "description": "fedsys federated learning app (DP-SGD, SecAgg+)",
            "license": "Apache-2.0",
            "dependencies": [],
        },
        "tool": {
            "flwr": {
                "app": {
                    "publisher": "fedsys",
                    "components": {"serverapp": "server.app:app", "clientapp": "clients.app:app"},
                    "config": RunConfig().to_mapping(),
                }
            }
        },
    }


def app_files() -> dict[str, bytes]:
    """Relative path -> content of every file of the app, read from the installed packages."""
    files = {"pyproject.toml": tomli_w.dumps(app_pyproject()).encode()}
    for package in APP_PACKAGES:
        root = _package_dir(package)
        for path in sorted(root.rglob("*")):
            if path.is_file() and path.suffix in _SUFFIXES and "__pycache__" not in path.parts:
                files[f"{package}/{path.relative_to(root).as_posix()}"] = path.read_bytes()
    return files


def build_app() -> AppBundle:
    """Build the FAB of the installed fedsys app (the bytes ``flwr run`` would send)."""
    from flwr.cli.build import build_fab_from_files

    try:
        with _quiet_pathspec():
            fab, _ = build_fab_from_files(dict(app_files()))
    except ValueError as err:
        raise DeploymentError(f"cannot build the fedsys Flower app: {err}") from err
    return AppBundle(fab, hashlib.sha256(fab).hexdigest())


def stage_app(directory: Path) -> AppBundle:
    """Unpack the installed app into ``directory`` (for ``flwr run DIR``) and check the rebuild.

    Raises:
        DeploymentError: rebuilding from ``directory`` does not give the same FAB hash.
    """
    bundle = build_app()
    with zipfile.ZipFile(io.BytesIO(bundle.fab)) as archive:
        for name in archive.namelist():
            if name.startswith(".info/"):
                continue
            target = directory / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.read(name))
    rebuilt = directory_fab_hash(directory)
    if rebuilt != bundle.fab_hash:
        raise DeploymentError(
            f"the staged app in {directory} rebuilds to FAB {rebuilt[:12]}, not {bundle.fab_hash[:12]}"
        )
    return bundle


def directory_fab_hash(directory: Path) -> str:
    """The FAB hash ``flwr run DIRECTORY`` would submit."""
    from flwr.cli.build import build_fab_from_disk

    try:
        with _quiet_pathspec():
            return hashlib.sha256(build_fab_from_disk(directory)).hexdigest()
    except (OSError, ValueError) as err:
        raise DeploymentError(f"cannot build a Flower app from {directory}: {err}") from err


def fab_hash_of(fab_file: Path) -> str:
    """SHA-256 of a .fab file (as built by ``flwr build``)."""
    try:
        return hashlib.sha256(fab_file.read_bytes()).hexdigest()
    except OSError as err:
        raise DeploymentError(f"cannot read FAB file {fab_file}: {err}") from err


def check_fab_hash(value: str) -> str:
    """Normalise a FAB hash given on the command line (64 hex digits)."""
    digest = value.strip().lower()
    if not _HASH_RE.match(digest):
        raise DeploymentError(f"a FAB hash is 64 hexadecimal digits (SHA-256), got {value!r}")
    return digest


@contextmanager
def _quiet_pathspec() -> Iterator[None]:
    # flwr 1.41 builds FABs with pathspec's deprecated "gitwildmatch" pattern name (third-party).
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*GitWildMatchPattern", category=DeprecationWarning)
        yield


def _package_dir(name: str) -> Path:
    module = importlib.import_module(name)
    if module.__file__ is None:
        raise DeploymentError(f"package {name!r} has no files on disk; reinstall fedsys")
    return Path(module.__file__).parent


def _installed_version() -> str:
    try:
        return importlib.metadata.version("fedsys")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"
