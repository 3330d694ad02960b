"""fedsys: privacy-preserving federated learning on Flower, Opacus DP-SGD and secure aggregation."""

__version__ = "0.1.0"
