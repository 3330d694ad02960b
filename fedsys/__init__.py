"""fedsys: privacy-preserving federated learning on Flower, Opacus DP-SGD and secure aggregation."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedsys.api import Run, simulate

__version__ = "0.1.0"
__all__ = ["Run", "simulate"]

_API = ("Run", "simulate")


def __getattr__(name: str) -> Any:
    """``fedsys.simulate`` and ``fedsys.Run``, imported on first use so ``import fedsys`` stays cheap."""
    if name in _API:
        from fedsys import api

        return getattr(api, name)
    raise AttributeError(f"module 'fedsys' has no attribute {name!r}")
