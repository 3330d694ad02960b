"""Text files (CSV/Parquet with a text column) as fixed-length token-id sequences.

Tokenisation uses no statistic of the private records: the vocabulary is either UTF-8
bytes (the default: id ``byte + 1``, vocabulary 257 with padding) or a public tokenizer file the data
holder names; it is never built from the texts. So no record shapes how another is
encoded, and the vocabulary reveals nothing about the data. Each text is encoded on its
own, truncated or padded (with :data:`PAD_ID`) to ``max_length`` tokens.

A tokenizer file is JSON: ``{"split": "char" | "whitespace", "tokens": [...]}`` with an
optional ``"lowercase": true``. Token ``tokens[i]`` gets id ``i + 2``; 0 is padding and 1
stands for anything not in the list. Ids are stored as float32 (exact below 2**24) in the
usual :class:`~fedsys.data.dataset.ArrayDataset`; the sequence models cast them back.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fedsys.data.dataset import ArrayDataset
from fedsys.data.files import DECLARE_LABELS, encode_labels, labelled
from fedsys.errors import DataError

PAD_ID = 0
UNKNOWN_ID = 1
_FIRST_TOKEN_ID = 2
BYTE_VOCAB_SIZE = 256 + 1  # every UTF-8 byte, plus padding
MAX_VOCAB_SIZE = 2**24  # ids are stored as float32, exact up to here


@dataclass(frozen=True)
class Tokenizer:
    """A public text-to-ids mapping: ``encode`` is called on one text at a time."""

    name: str
    vocab_size: int
    encode: Callable[[str], list[int]]


def byte_tokenizer() -> Tokenizer:
    """UTF-8 bytes: id ``byte + 1``, so any text encodes and no vocabulary is needed."""
    return Tokenizer("bytes", BYTE_VOCAB_SIZE, lambda text: [b + 1 for b in text.encode()])


def load_tokenizer(spec: str) -> Tokenizer:
    """``"bytes"``, or a public tokenizer JSON file (see the module docstring).

    Raises:
        DataError: the file is missing, not valid JSON, or not of the documented shape.
    """
    if spec == "bytes":
        return byte_tokenizer()
    path = Path(spec)
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise DataError(f"cannot read tokenizer file {path}: {err}") from err
    except json.JSONDecodeError as err:
        raise DataError(f"tokenizer file {path} is not valid JSON: {err}") from err
    split, tokens, lowercase = _tokenizer_fields(content, path)
    ids = {token: i + _FIRST_TOKEN_ID for i, token in enumerate(tokens)}

    def encode(text: str) -> list[int]:
        text = text.lower() if lowercase else text
        pieces = list(text) if split == "char" else text.split()
        return [ids.get(piece, UNKNOWN_ID) for piece in pieces]

    return Tokenizer(str(path), len(tokens) + _FIRST_TOKEN_ID, encode)


def _tokenizer_fields(content: object, path: Path) -> tuple[str, list[str], bool]:
    shape = '{"split": "char" | "whitespace", "tokens": [...], "lowercase": false}'
    if not isinstance(content, dict) or set(content) - {"split", "tokens", "lowercase"}:
        raise DataError(f"tokenizer file {path} must be a JSON object {shape}")
    split, tokens, lowercase = content.get("split"), content.get("tokens"), content.get("lowercase", False)
    if split not in ("char", "whitespace"):
        raise DataError(f"tokenizer file {path}: split must be 'char' or 'whitespace', got {split!r}")
    if not isinstance(lowercase, bool):
        raise DataError(f"tokenizer file {path}: lowercase must be true or false, got {lowercase!r}")
    if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) and t for t in tokens):
        raise DataError(f"tokenizer file {path}: tokens must be a non-empty list of non-empty strings")
    if split == "char" and any(len(t) != 1 for t in tokens):
        bad = next(t for t in tokens if len(t) != 1)
        raise DataError(f"tokenizer file {path}: split 'char' needs single characters, got {bad!r}")
    repeated = sorted({t for t in tokens if tokens.count(t) > 1})
    if repeated:
        raise DataError(f"tokenizer file {path} lists token(s) twice: {repeated[:5]}")
    if len(tokens) + _FIRST_TOKEN_ID > MAX_VOCAB_SIZE:
        raise DataError(f"tokenizer file {path} has {len(tokens)} tokens; at most {MAX_VOCAB_SIZE - 2}")
    return split, tokens, lowercase


def encode_texts(texts: list[str], tokenizer: Tokenizer, *, max_length: int) -> np.ndarray:
    """``N x max_length`` float32 ids: each text encoded alone, truncated, padded with 0."""
    ids = np.full((len(texts), max_length), PAD_ID, dtype=np.float32)
    for row, text in enumerate(texts):
        encoded = tokenizer.encode(text)[:max_length]
        ids[row, : len(encoded)] = encoded
    return ids


def load_text_file(
    path: Path,
    *,
    text_column: str,
    label_column: str = "label",
    max_length: int,
    tokenizer: str = "bytes",
    num_classes: int = 0,
    labels: Sequence[str] = (),
) -> ArrayDataset:
    """A CSV or Parquet table's text column as token ids, with integer class labels.

    Args:
        path: ``.csv``, ``.parquet`` or ``.pq`` file.
        text_column: the column holding the texts (missing values are an error).
        label_column: the column holding integer class labels.
        max_length: tokens kept per text (the model's sequence length).
        tokenizer: ``"bytes"`` or the path of a public tokenizer JSON file.
        num_classes: as in :func:`fedsys.data.files.load_file` (0: ``max(label) + 1``).
        labels: the declared label set, as in :func:`fedsys.data.files.load_file`.

    Raises:
        DataError: the file, its columns or the tokenizer are missing or malformed.
    """
    if max_length < 1:
        raise DataError(f"text max-length must be >= 1, got {max_length}")
    encoder = load_tokenizer(tokenizer)
    frame = _read_frame(path)
    for column in (text_column, label_column):
        if column not in frame.columns:
            raise DataError(
                f"{path} has no column {column!r} (columns: {', '.join(map(str, frame.columns))})"
            )
    texts = frame[text_column]
    missing = int(texts.isna().sum())
    if missing:
        raise DataError(f"{path}: text column {text_column!r} has {missing} missing value(s)")
    ids = encode_texts([str(t) for t in texts], encoder, max_length=max_length)
    if labels:
        column = frame[label_column].astype("string").to_numpy()
        return labelled(ids, encode_labels(column, labels, path), len(labels), path)
    values = frame[label_column]
    if not pd.api.types.is_numeric_dtype(values) or values.isna().any():
        raise DataError(
            f"{path}: label column {label_column!r} must hold integer class indices, or {DECLARE_LABELS}"
        )
    return labelled(ids, values.to_numpy(), num_classes, path)


def _read_frame(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in {".csv", ".parquet", ".pq"}:
        raise DataError(f"text data must be a .csv or .parquet file, got {suffix!r} for {path}")
    try:
        return pd.read_csv(path) if suffix == ".csv" else pd.read_parquet(path)
    except ImportError as err:  # pandas reads Parquet through pyarrow (a fedsys dependency)
        raise DataError(f"cannot read {path}: Parquet needs pyarrow ({err})") from err
    except (ValueError, OSError, pd.errors.ParserError) as err:
        raise DataError(f"cannot read {path}: {err}") from err
