"""Data sets: built-in, user files, and their federated partitioning."""

from fedsys.data.dataset import ArrayDataset
from fedsys.data.federated import (
    ClientData,
    central_test_data,
    data_signature,
    holder_client_data,
    simulated_client_data,
)
from fedsys.data.files import load_file

__all__ = [
    "ArrayDataset",
    "ClientData",
    "central_test_data",
    "data_signature",
    "holder_client_data",
    "load_file",
    "simulated_client_data",
]
