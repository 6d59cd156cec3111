import numpy as np
import pytest
import torch

from pgolf.shards import SHARD_HEADER_BYTES, BatchLoader, ShardError, TokenStream, read_shard, validation_tokens, write_shard

from conftest import TRAIN_PATTERN, VAL_PATTERN


def test_reads_the_challenge_shards():
    tokens = read_shard(VAL_PATTERN.replace("*", "000000"))
    assert tokens.dtype == np.dtype("<u2") and tokens.size == 108_501
    assert tokens[0] == 1  # every document starts with BOS


def test_write_then_read_round_trips(tmp_path):
    tokens = np.arange(0, 5000, dtype=np.uint16)
    write_shard(str(tmp_path / "a.bin"), tokens)
    assert np.array_equal(read_shard(str(tmp_path / "a.bin")), tokens)
    assert (tmp_path / "a.bin").stat().st_size == SHARD_HEADER_BYTES + 2 * tokens.size


def test_truncated_shard_is_named(tmp_path):
    write_shard(str(tmp_path / "t.bin"), np.arange(100, dtype=np.uint16))
    data = (tmp_path / "t.bin").read_bytes()
    (tmp_path / "t.bin").write_bytes(data[:-10])
    with pytest.raises(ShardError, match="t.bin is truncated"):
        read_shard(str(tmp_path / "t.bin"))
    (tmp_path / "t.bin").write_bytes(data[:100])
    with pytest.raises(ShardError, match="shorter than its"):
        read_shard(str(tmp_path / "t.bin"))


def test_wrong_magic_is_named(tmp_path):
    write_shard(str(tmp_path / "m.bin"), np.arange(10, dtype=np.uint16))
    data = bytearray((tmp_path / "m.bin").read_bytes())
    data[0] ^= 0xFF
    (tmp_path / "m.bin").write_bytes(bytes(data))
    with pytest.raises(ShardError, match="wrong magic"):
        read_shard(str(tmp_path / "m.bin"))


def test_tokens_beyond_vocab_are_a_mismatch():
    with pytest.raises(ShardError, match="vocab_size is 512"):
        validation_tokens(VAL_PATTERN, 256, vocab_size=512)


def test_stream_is_deterministic_and_wraps(tmp_path):
    write_shard(str(tmp_path / "fineweb_train_000000.bin"), np.arange(10, dtype=np.uint16))
    write_shard(str(tmp_path / "fineweb_train_000001.bin"), np.arange(10, 15, dtype=np.uint16))
    stream = TokenStream(str(tmp_path / "fineweb_train_*.bin"), vocab_size=1024)
    assert stream.take(12).tolist() == list(range(12))
    assert stream.take(6).tolist() == [12, 13, 14, 0, 1, 2]


def test_batches_shift_targets_by_one():
    loader = BatchLoader(TRAIN_PATTERN, 1024, rank=0, world_size=1, device=torch.device("cpu"))
    x, y = loader.next_batch(512, 128)
    assert x.shape == (4, 128) and torch.equal(x.reshape(-1)[1:], y.reshape(-1)[:-1])


def test_spans_cut_the_stream_as_the_official_loader_does(tmp_path):
    # The official loader takes tokens + 1 per rank and accumulation step; a span's last token is only a
    # target. One pass over 4 spans must see exactly the sequences of 4 such takes, in order.
    write_shard(str(tmp_path / "fineweb_train_000000.bin"), np.arange(100, dtype=np.uint16))
    pattern = str(tmp_path / "fineweb_train_*.bin")
    whole = BatchLoader(pattern, 1024, rank=0, world_size=1, device=torch.device("cpu"))
    x, y = whole.next_batch(16, 4, spans=4)
    assert x.shape == (4, 4) and x[1].tolist() == [5, 6, 7, 8] and y[0].tolist() == [1, 2, 3, 4]
    stepwise = BatchLoader(pattern, 1024, rank=0, world_size=1, device=torch.device("cpu"))
    takes = [stepwise.next_batch(4, 4) for _ in range(4)]
    assert torch.equal(x, torch.cat([t[0] for t in takes])) and torch.equal(y, torch.cat([t[1] for t in takes]))
    # Two ranks split one take: rank 1's spans follow rank 0's.
    ranks = [BatchLoader(pattern, 1024, rank=r, world_size=2, device=torch.device("cpu")) for r in (0, 1)]
    (x0, _), (x1, _) = (loader.next_batch(8, 4, spans=2) for loader in ranks)
    assert x0[:, 0].tolist() == [0, 5] and x1[:, 0].tolist() == [10, 15]


def test_validation_split_is_whole_sequences():
    tokens = validation_tokens(VAL_PATTERN, 256, vocab_size=1024)
    assert (tokens.numel() - 1) % 256 == 0 and tokens.numel() - 1 == 108_288
