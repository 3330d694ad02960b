"""Exception tree for fedsys.

Every error fedsys raises on purpose derives from :class:`FedsysError`::

    FedsysError
    ├── ConfigError (also ValueError)      a run-config key, value or CLI option is wrong
    ├── DataError (also ValueError)        a data set cannot be read, parsed or partitioned
    ├── ModelError (also ValueError)       weights do not fit the model (names, shapes, NaN)
    ├── BudgetExceededError                the client's privacy budget does not allow the work
    ├── LedgerError                        the privacy ledger is unreadable or inconsistent
    ├── ProtocolError                      a peer broke the federated / secure-aggregation protocol
    │   └── IntegrityError                 an AEAD tag failed: the message was tampered or replayed
    ├── AbortedRoundError                  a round could not complete (too few clients / survivors)
    └── DeploymentError                    certificates, keys or Flower processes are misconfigured

The CLI turns any of these into a one-line message and exit code 2.
"""

from __future__ import annotations


class FedsysError(Exception):
    """Base class of all fedsys errors."""


class ConfigError(FedsysError, ValueError):
    """A configuration key, value or command-line option is invalid."""


class DataError(FedsysError, ValueError):
    """A data set cannot be read, parsed or partitioned as asked."""


class ModelError(FedsysError, ValueError):
    """Weights do not match the model, or contain non-finite values."""


class BudgetExceededError(FedsysError):
    """The client's privacy budget does not allow the requested training."""


class LedgerError(FedsysError):
    """The privacy ledger cannot be read or is inconsistent."""


class ProtocolError(FedsysError):
    """A peer deviated from the protocol (wrong stage, missing fields, bad sizes)."""


class IntegrityError(ProtocolError):
    """An authenticated ciphertext failed verification (tampered, replayed, redirected)."""


class AbortedRoundError(FedsysError):
    """A round was abandoned; no partial result is released."""


class DeploymentError(FedsysError):
    """Certificates, keys or Flower processes are misconfigured."""
