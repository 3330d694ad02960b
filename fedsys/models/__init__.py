"""Model zoo and weight (de)serialisation."""

from fedsys.models.weights import check_weights, load_weights, to_arrays
from fedsys.models.zoo import MODELS, build_model

__all__ = ["MODELS", "build_model", "check_weights", "load_weights", "to_arrays"]
