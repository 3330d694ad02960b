"""``package.module:attribute`` references: how a user's model factory or data loader is named."""

from __future__ import annotations

import importlib
from typing import Any

from fedsys.errors import ConfigError


def import_callable(name: str, *, kind: str, where: str) -> Any:
    """The callable ``package.module:attr[.attr...]`` names, imported here.

    Args:
        name: The reference (already checked to be ``package.module:attribute``).
        kind: What it is, for messages (``model``, ``dataset``).
        where: Where it must be importable, for messages.

    Raises:
        ConfigError: the module cannot be imported, or the attribute is missing or not callable.
    """
    module_name, _, attribute = name.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"{kind} {name!r}: cannot import {module_name!r} ({err}); {where}") from err
    for part in attribute.split("."):
        target = getattr(target, part, None)
    if not callable(target):
        raise ConfigError(f"{kind} {name!r}: {module_name!r} has no callable {attribute!r}")
    return target
