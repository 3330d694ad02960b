"""Sequence classifiers over token ids (:mod:`fedsys.data.text`) that Opacus can train.

Both take ``feature_shape = (max_length,)`` (token ids, 0 = padding, given as float32 or
integers) and embed them with ``nn.Embedding`` (Opacus has a per-sample gradient sampler
for it). ``vocab_size`` defaults to the byte tokenizer's 257; for a tokenizer file with more
tokens, wrap them in your own factory (``model = "mypkg.models:lstm_5k"`` returning
``lstm(shape, classes, vocab_size=5002)``). Ids outside the vocabulary raise ``ModelError``.

- ``lstm``: Opacus' ``DPLSTM`` (an LSTM made of ``RNNLinear`` layers that Opacus computes
  per-sample gradients for), masked mean over the outputs at real tokens, linear head.
- ``transformer``: a pre-LayerNorm encoder (Vaswani et al. 2017; Xiong et al. 2020) whose
  attention is built from ``nn.Linear`` layers (:class:`SelfAttention`), fixed sinusoidal
  position encodings, masked mean pooling, no dropout and no BatchNorm. Fixed positions make
  "the byte before" one linear map for every position; with learned position embeddings the
  byte-level model learned words far more slowly under DP-SGD (measured on generated text).

Padding never reaches the prediction: the LSTM reads left to right and padding comes last,
attention masks padded keys, and pooling averages only real tokens.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from fedsys.data.text import BYTE_VOCAB_SIZE, PAD_ID
from fedsys.errors import ConfigError, ModelError

EMBED_DIM = 32
LSTM_HIDDEN = 64
TRANSFORMER_DIM = 64
TRANSFORMER_HEADS = 4
TRANSFORMER_LAYERS = 2
TRANSFORMER_FF = 128


def _sequence_length(feature_shape: tuple[int, ...], name: str) -> int:
    if len(feature_shape) != 1 or feature_shape[0] < 1:
        raise ConfigError(
            f"model {name!r} needs token sequences of shape (max_length,), got shape {feature_shape}"
        )
    return feature_shape[0]


def _token_ids(x: torch.Tensor, vocab_size: int) -> torch.Tensor:
    tokens = x.long()
    if torch.compiler.is_exporting() or torch._C._get_tracing_state() is not None:  # export: no data check
        return tokens
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab_size):
        raise ModelError(
            f"token ids must be in [0, {vocab_size}), got [{int(tokens.min())}, {int(tokens.max())}]; "
            "size the model's vocab_size for the tokenizer"
        )
    return tokens


def _masked_mean(states: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Mean of ``states`` (N x L x D) over the positions where ``real`` (N x L) is True."""
    weights = real.unsqueeze(-1).to(states.dtype)
    return (states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def _aliases(module: nn.Module, prefix: str) -> list[tuple[str, str]]:
    """``(submodule name, nn.LSTM name)`` of every parameter a ``DPLSTM`` inside registers twice."""
    return [
        (f"{prefix}{path}.{old}", f"{prefix}{path}.{new}")
        for path, child in module.named_modules()
        for old, new in getattr(child, "old_to_new", {}).items()
    ]


def _drop_lstm_aliases(module: nn.Module, state_dict: dict[str, Any], prefix: str, _: object) -> None:
    """State-dict post-hook: keep only ``nn.LSTM``'s parameter names (``weight_ih_l0``, ...).

    ``DPLSTM`` registers every parameter twice, under ``nn.LSTM``'s name and its submodule's
    (``l0.ih.weight``). Its own filter works only on a top-level ``DPLSTM`` (it compares
    unprefixed names and returns a copy), so nested in a model the weights would travel twice.
    """
    for alias, _name in _aliases(module, prefix):
        state_dict.pop(alias, None)


def _restore_lstm_aliases(module: nn.Module, state_dict: dict[str, Any], prefix: str, *_: object) -> None:
    """Load pre-hook: give each submodule name the tensor of its ``nn.LSTM`` name."""
    for alias, name in _aliases(module, prefix):
        if name in state_dict:
            state_dict[alias] = state_dict[name]


class LSTMClassifier(nn.Module):
    """Embedding, one-layer ``DPLSTM``, masked mean pooling, linear head (~30k parameters)."""

    def __init__(
        self,
        feature_shape: tuple[int, ...],
        num_classes: int,
        *,
        vocab_size: int = BYTE_VOCAB_SIZE,
        embed_dim: int = EMBED_DIM,
        hidden: int = LSTM_HIDDEN,
    ) -> None:
        super().__init__()
        from opacus.layers import DPLSTM

        _sequence_length(feature_shape, "lstm")
        self.vocab_size = vocab_size
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.lstm = DPLSTM(embed_dim, hidden, batch_first=True)
        self.register_state_dict_post_hook(_drop_lstm_aliases)  # type: ignore[no-untyped-call]
        self.register_load_state_dict_pre_hook(_restore_lstm_aliases)  # type: ignore[no-untyped-call]
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = _token_ids(x, self.vocab_size)
        states, _ = self.lstm(self.embedding(tokens))
        out: torch.Tensor = self.head(_masked_mean(states, tokens != PAD_ID))
        return out


class SelfAttention(nn.Module):
    """Multi-head self-attention from two ``nn.Linear`` layers (query/key/value, output).

    Opacus computes per-sample gradients for ``nn.Linear`` on sequences; the attention
    itself (``scaled_dot_product_attention``) has no parameters. Written here rather than
    using Opacus' ``DPMultiheadAttention``, which fails on the empty batches that Poisson
    sampling produces (it reshapes with ``view(-1, 0, ...)``; measured with Opacus 1.6).
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ConfigError(f"attention width {dim} must be divisible by the number of heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, attend: torch.Tensor) -> torch.Tensor:
        """``x``: N x L x D; ``attend``: N x L, True where a key may be attended to."""
        batch, length, dim = x.shape
        qkv = self.qkv(x).reshape(batch, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        mask = attend[:, None, None, :]  # broadcast over heads and queries
        mixed = nn.functional.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=mask)
        out: torch.Tensor = self.out(mixed.transpose(1, 2).reshape(batch, length, dim))
        return out


class EncoderBlock(nn.Module):
    """Pre-LayerNorm block: ``x + attn(LN(x))``, then ``x + FFN(LN(x))``."""

    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(dim)
        self.attention = SelfAttention(dim, heads)
        self.feedforward_norm = nn.LayerNorm(dim)
        self.feedforward = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, attend: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x), attend)
        out: torch.Tensor = x + self.feedforward(self.feedforward_norm(x))
        return out


def _sinusoids(length: int, dim: int) -> torch.Tensor:
    """Fixed position encodings (Vaswani et al. 2017, Sec. 3.5): a public constant, no weights."""
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    frequency = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10_000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency)
    return table


class TransformerClassifier(nn.Module):
    """Token embeddings plus fixed sinusoidal positions, pre-LN encoder blocks, masked mean
    pooling, linear head (~70k parameters with the defaults)."""

    position: torch.Tensor

    def __init__(
        self,
        feature_shape: tuple[int, ...],
        num_classes: int,
        *,
        vocab_size: int = BYTE_VOCAB_SIZE,
        dim: int = TRANSFORMER_DIM,
        heads: int = TRANSFORMER_HEADS,
        layers: int = TRANSFORMER_LAYERS,
        hidden: int = TRANSFORMER_FF,
    ) -> None:
        super().__init__()
        length = _sequence_length(feature_shape, "transformer")
        self.vocab_size = vocab_size
        self.embedding = nn.Embedding(vocab_size, dim)
        self.register_buffer("position", _sinusoids(length, dim), persistent=False)
        self.blocks = nn.ModuleList(EncoderBlock(dim, heads, hidden) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = _token_ids(x, self.vocab_size)
        states = self.embedding(tokens) + self.position[: tokens.shape[1]]
        real = tokens != PAD_ID
        # an all-padding text attends to its padding (a fully masked row would give NaN)
        attend = real | ~real.any(dim=1, keepdim=True)
        for block in self.blocks:
            states = block(states, attend)
        out: torch.Tensor = self.head(_masked_mean(self.norm(states), real))
        return out


def lstm(feature_shape: tuple[int, ...], num_classes: int, *, vocab_size: int = BYTE_VOCAB_SIZE) -> nn.Module:
    """:class:`LSTMClassifier` for ``(max_length,)`` token ids."""
    return LSTMClassifier(feature_shape, num_classes, vocab_size=vocab_size)


def transformer(
    feature_shape: tuple[int, ...], num_classes: int, *, vocab_size: int = BYTE_VOCAB_SIZE
) -> nn.Module:
    """:class:`TransformerClassifier` for ``(max_length,)`` token ids."""
    return TransformerClassifier(feature_shape, num_classes, vocab_size=vocab_size)
