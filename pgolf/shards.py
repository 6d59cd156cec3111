"""The challenge's token shard format, and deterministic token streams over shards.

A shard is 256 little-endian int32 header values (magic 20240520, version 1, token count, zeros)
followed by the tokens as little-endian uint16. Every document starts with BOS (id 1).
"""

import glob
import os

import numpy as np
import torch
from torch import Tensor

SHARD_MAGIC = 20240520
SHARD_VERSION = 1
SHARD_HEADER_INTS = 256
SHARD_HEADER_BYTES = SHARD_HEADER_INTS * 4


class ShardError(ValueError):
    """A shard file that is missing, truncated or not in the challenge format."""


def shard_tokens(path: str) -> int:
    """The token count of one shard, after checking its header and exact file size."""
    try:
        size = os.path.getsize(path)
        header = np.fromfile(path, dtype="<i4", count=SHARD_HEADER_INTS)
    except OSError as exc:
        raise ShardError(f"cannot read shard {path}: {exc.strerror}") from None
    if not size:
        raise ShardError(f"shard {path} is empty")
    if header.size and int(header[0]) != SHARD_MAGIC:
        raise ShardError(f"{path} is not a token shard (wrong magic {int(header[0])}, expected {SHARD_MAGIC})")
    if header.size != SHARD_HEADER_INTS:
        raise ShardError(f"shard {path} is truncated: {size} bytes, shorter than its {SHARD_HEADER_BYTES}-byte header")
    if int(header[1]) != SHARD_VERSION:
        raise ShardError(f"shard {path} has unsupported version {int(header[1])} (expected {SHARD_VERSION})")
    num_tokens = int(header[2])
    expected = SHARD_HEADER_BYTES + 2 * num_tokens
    if num_tokens < 0 or size != expected:
        raise ShardError(f"shard {path} is truncated or padded: {size} bytes, header says {num_tokens} tokens ({expected} bytes)")
    return num_tokens


def read_shard(path: str) -> np.ndarray:
    """Tokens of one shard as uint16, after checking the header and the exact file size."""
    return np.fromfile(path, dtype="<u2", count=shard_tokens(path), offset=SHARD_HEADER_BYTES)


def write_shard(path: str, tokens: np.ndarray) -> None:
    """Write tokens (values < 65536) as a shard, atomically: a reader never sees a partial file."""
    tokens = np.asarray(tokens)
    if tokens.size and (tokens.min() < 0 or tokens.max() > 65535):
        raise ShardError(f"token ids out of uint16 range for shard {path}")
    header = np.zeros(SHARD_HEADER_INTS, dtype="<i4")
    header[:3] = (SHARD_MAGIC, SHARD_VERSION, tokens.size)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.astype("<u2").tobytes())
    os.replace(tmp, path)


def shard_files(pattern: str) -> list[str]:
    files = sorted(glob.glob(pattern))
    if not files:
        raise ShardError(f"no shard files match {pattern}")
    return files


def token_count(pattern: str) -> int:
    """Tokens in all shards matching `pattern`, from their (checked) headers alone."""
    return sum(shard_tokens(f) for f in shard_files(pattern))


def check_vocab(tokens: np.ndarray, vocab_size: int, what: str) -> None:
    if tokens.size and int(tokens.max()) >= vocab_size:
        raise ShardError(
            f"{what} holds token id {int(tokens.max())} but the model's vocab_size is {vocab_size}: "
            "shards and tokenizer/config do not match"
        )


def load_tokens(pattern: str, vocab_size: int) -> Tensor:
    """All tokens of the shards matching `pattern`, concatenated in file order (int32)."""
    parts = [read_shard(f) for f in shard_files(pattern)]
    tokens = np.concatenate(parts) if len(parts) > 1 else parts[0]
    check_vocab(tokens, vocab_size, f"shards {pattern}")
    return torch.from_numpy(tokens.astype(np.int32))


def validation_tokens(pattern: str, seq_len: int, vocab_size: int, limit: int = 0) -> Tensor:
    """The validation split truncated to whole sequences (+1 target), optionally to its first `limit` tokens."""
    tokens = load_tokens(pattern, vocab_size)
    if limit:
        tokens = tokens[: limit + 1]
    usable = ((tokens.numel() - 1) // seq_len) * seq_len
    if usable <= 0:
        raise ShardError(f"validation split {pattern} is shorter than one sequence of {seq_len} tokens")
    return tokens[: usable + 1]


class TokenStream:
    """Reads shards in order and wraps around forever: training data order is a pure function of the files."""

    def __init__(self, pattern: str, vocab_size: int):
        self.files = shard_files(pattern)
        self.vocab_size = vocab_size
        self.file_index = 0
        self.tokens = self._load(0)
        self.pos = 0

    def _load(self, index: int) -> np.ndarray:
        tokens = read_shard(self.files[index])
        if not tokens.size:  # a stream over it would wait forever for its next token
            raise ShardError(f"shard {self.files[index]} holds no tokens")
        check_vocab(tokens, self.vocab_size, f"shard {self.files[index]}")
        return tokens

    def take(self, n: int) -> Tensor:
        return torch.from_numpy(self.take_tokens(n).astype(np.int64))

    def take_tokens(self, n: int) -> np.ndarray:
        """The next n tokens, in the shards' own dtype (uint16)."""
        chunks = []
        while n > 0:
            if self.pos >= self.tokens.size:
                self.file_index = (self.file_index + 1) % len(self.files)
                if len(self.files) > 1:
                    self.tokens = self._load(self.file_index)
                self.pos = 0
            k = min(n, self.tokens.size - self.pos)
            chunks.append(self.tokens[self.pos : self.pos + k])
            self.pos += k
            n -= k
        return np.concatenate(chunks)


class BatchLoader:
    """Each call cuts consecutive spans of tokens + 1 from the shared stream, as the official loader does per
    rank and accumulation step, and shapes this rank's share of them into (x, y)."""

    def __init__(self, pattern: str, vocab_size: int, rank: int, world_size: int, device: torch.device):
        self.stream = TokenStream(pattern, vocab_size)
        self.rank = rank
        self.world_size = world_size
        self.device = device

    def next_batch(self, tokens: int, seq_len: int, spans: int = 1) -> tuple[Tensor, Tensor]:
        """`tokens` inputs for this rank, from `spans` spans of tokens / spans + 1 (each span's last token is
        only a target). Every rank's spans come from one take, so ranks read disjoint, consecutive data."""
        span = tokens // spans + 1
        chunk = self.stream.take_tokens(span * spans * self.world_size)
        # Only this rank's share is widened to int64 (the others' tokens are skipped, not converted).
        local = torch.from_numpy(chunk[self.rank * span * spans : (self.rank + 1) * span * spans].astype(np.int64))
        if self.device.type == "cuda":  # a copy from pinned memory is asynchronous: the host goes on queueing work
            local = local.pin_memory().to(self.device, non_blocking=True)
        local = local.view(spans, span)
        x = local[:, :-1].reshape(-1, seq_len)
        y = local[:, 1:].reshape(-1, seq_len)
        return x, y
