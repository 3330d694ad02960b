"""Model zoo, user model factories (``package.module:factory``) and weight (de)serialisation."""

from fedsys.models.factory import (
    build_checked_model,
    build_model,
    check_dp_compatible,
    check_norms,
    dp_problems,
    fix_model,
    model_reference,
    resolve_factory,
)
from fedsys.models.weights import check_weights, flatten, load_weights, to_arrays, unflatten
from fedsys.models.zoo import MODELS

__all__ = [
    "MODELS",
    "build_checked_model",
    "build_model",
    "check_dp_compatible",
    "check_norms",
    "check_weights",
    "dp_problems",
    "fix_model",
    "flatten",
    "load_weights",
    "model_reference",
    "resolve_factory",
    "to_arrays",
    "unflatten",
]
