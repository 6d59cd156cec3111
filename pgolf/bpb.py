"""Bits per byte, with the challenge's exact byte accounting.

A target token's bytes: UTF-8 length of its piece without a leading "▁", plus 1 if the piece has a
leading "▁" and the previous token is not a control/unknown/unused token. Byte-fallback pieces count 1;
control, unknown and unused pieces count 0. bpb = (mean CE in nats / ln 2) * (tokens / bytes).
"""

import math
import os

import numpy as np
import sentencepiece as spm
import torch
from torch import Tensor


class TokenizerError(ValueError):
    """A tokenizer file that cannot be loaded or does not match the model/shards."""


def load_tokenizer(path: str, vocab_size: int | None = None) -> spm.SentencePieceProcessor:
    if not str(path).endswith(".model"):
        raise TokenizerError(f"tokenizer {path} is not a SentencePiece .model file")
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise TokenizerError(f"tokenizer {path} is an empty file")
    try:
        sp = spm.SentencePieceProcessor(model_file=str(path))
    except (OSError, RuntimeError) as exc:
        reason = str(exc).strip().splitlines()[-1]
        if "could not parse ModelProto" in reason:  # SentencePiece's words for bytes that are no model
            reason = "not a SentencePiece model"
        raise TokenizerError(f"cannot load tokenizer {path}: {reason}") from None
    if vocab_size is not None and int(sp.vocab_size()) != vocab_size:
        raise TokenizerError(f"tokenizer {path} has {int(sp.vocab_size())} pieces but the config's vocab_size is {vocab_size}")
    return sp


class ByteLuts:
    """Per-token lookup tables: base byte count, leading-space flag, boundary (control/unknown/unused) flag."""

    def __init__(self, sp: spm.SentencePieceProcessor, vocab_size: int):
        size = max(int(sp.vocab_size()), vocab_size)
        base = np.zeros(size, dtype=np.int16)
        leading_space = np.zeros(size, dtype=np.bool_)
        boundary = np.ones(size, dtype=np.bool_)
        for token in range(int(sp.vocab_size())):
            if sp.is_control(token) or sp.is_unknown(token) or sp.is_unused(token):
                continue
            boundary[token] = False
            if sp.is_byte(token):
                base[token] = 1
                continue
            piece = sp.id_to_piece(token)
            if piece.startswith("\u2581"):
                leading_space[token] = True
                piece = piece[1:]
            base[token] = len(piece.encode("utf-8"))
        self.base = torch.from_numpy(base)
        self.leading_space = torch.from_numpy(leading_space)
        self.boundary = torch.from_numpy(boundary)

    def to(self, device: torch.device) -> "ByteLuts":
        for name in ("base", "leading_space", "boundary"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def target_bytes(self, prev_ids: Tensor, target_ids: Tensor) -> Tensor:
        """Bytes of each target token given the token before it (int32, same shape)."""
        extra = self.leading_space[target_ids] & ~self.boundary[prev_ids]
        return self.base[target_ids].to(torch.int32) + extra.to(torch.int32)


def bits_per_byte(loss_sum_nats: float, tokens: float, byte_count: float) -> float:
    return (loss_sum_nats / tokens) / math.log(2.0) * (tokens / byte_count)
