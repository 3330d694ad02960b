"""Model zoo and weight (de)serialisation."""

from fedsys.models.weights import check_weights, flatten, load_weights, to_arrays, unflatten
from fedsys.models.zoo import MODELS, build_model

__all__ = ["MODELS", "build_model", "check_weights", "flatten", "load_weights", "to_arrays", "unflatten"]
