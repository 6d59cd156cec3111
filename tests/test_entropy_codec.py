"""The context-modelling rANS coder for quantized matrices: exact round trips, hostile streams, and that it
codes below order-0 entropy where columns differ in spread."""

import numpy as np
import pytest

from pgolf.entropy_codec import STEPS_PER_LANE, EntropyCodecError, decode_matrices, encode_matrices


def _gaussian_symbols(rng, shape, bits, column_spread=True):
    qmax = (1 << (bits - 1)) - 1
    cols = np.exp(rng.normal(0, 0.4, size=shape[1])) if column_spread else np.ones(shape[1])
    w = rng.normal(0, 1, size=shape) * cols[None, :] * max(qmax / 3.0, 0.6)
    return np.clip(np.round(w), -qmax, qmax).astype(np.int8)


def _round_trip(matrices, bits):
    blob = encode_matrices(matrices, bits)
    assert isinstance(blob, bytes)
    out = decode_matrices(blob)
    assert len(out) == len(matrices)
    for original, back in zip(matrices, out):
        original = np.asarray(original)
        expected = original if original.ndim == 2 else original.reshape(1, -1)
        assert back.dtype == np.int8 and back.shape == expected.shape
        assert np.array_equal(back, expected)
    return blob


def _order0_bytes(matrices):
    total = 0.0
    for q in matrices:
        counts = np.bincount(np.asarray(q).reshape(-1).astype(np.int64) + 128)
        p = counts[counts > 0] / q.size
        total += float(-(p * np.log2(p)).sum()) * q.size / 8
    return total


@pytest.mark.parametrize("bits", range(2, 9))
def test_every_bit_width_round_trips(bits):
    rng = np.random.default_rng(bits)
    _round_trip([_gaussian_symbols(rng, (64, 96), bits), _gaussian_symbols(rng, (33, 17), bits)], [bits, bits])


def test_mixed_bit_widths_share_one_stream():
    rng = np.random.default_rng(0)
    bits = [2, 3, 4, 5, 6, 7, 8, 6]
    _round_trip([_gaussian_symbols(rng, (20 + b, 30 - b), b) for b in bits], bits)


@pytest.mark.parametrize("bits", [2, 6, 8])
def test_adversarial_streams_round_trip(bits):
    rng = np.random.default_rng(1)
    qmax = (1 << (bits - 1)) - 1
    cases = [
        np.zeros((40, 50), np.int8),  # all one value
        np.full((40, 50), qmax, np.int8),
        np.full((40, 50), -qmax, np.int8),
        rng.integers(-qmax, qmax + 1, size=(70, 90)).astype(np.int8),  # uniform over the whole range
        np.zeros((100, 100), np.int8),  # one huge outlier in a sea of zeros
        np.zeros((1, 1), np.int8),  # a single symbol
        rng.integers(-qmax, qmax + 1, size=(1, 3000)).astype(np.int8),  # 1 x N
        rng.integers(-qmax, qmax + 1, size=(3000, 1)).astype(np.int8),  # N x 1
        np.zeros((0, 7), np.int8),  # empty matrices
        np.zeros((5, 0), np.int8),
    ]
    cases[4][37, 59] = qmax
    for q in cases:
        _round_trip([q], [bits])
    _round_trip(cases, [bits] * len(cases))


def test_empty_stream_and_one_dimensional_input():
    assert decode_matrices(_round_trip([], [])) == []
    _round_trip([np.array([3, -1, 0, 2], np.int8)], [4])  # a vector is coded as one row


def test_many_lanes_with_a_short_last_lane():
    rng = np.random.default_rng(2)
    q = _gaussian_symbols(rng, (97, 1013), 5)  # 98,261 symbols: 6 lanes, the last one shorter
    assert q.size > 5 * STEPS_PER_LANE and q.size % 6
    _round_trip([q, q[:3, :5]], [5, 5])


def test_codes_below_order0_entropy_when_columns_differ():
    rng = np.random.default_rng(3)
    matrices = [_gaussian_symbols(rng, (256, 256), 6) for _ in range(4)]
    blob = _round_trip(matrices, [6] * 4)
    assert len(blob) < 0.985 * _order0_bytes(matrices)  # measured 0.978x: header, tables and column classes included


def test_symbols_outside_the_bit_width_are_refused():
    with pytest.raises(EntropyCodecError, match=r"outside \[-3, 3\] for 3 bits"):
        encode_matrices([np.array([[4]], np.int8)], [3])
    with pytest.raises(EntropyCodecError, match="bit width 9"):
        encode_matrices([np.zeros((2, 2), np.int8)], [9])


def _small_blob():
    rng = np.random.default_rng(4)
    return encode_matrices([_gaussian_symbols(rng, (6, 10), 4), _gaussian_symbols(rng, (3, 7), 6)], [4, 6])


def test_every_truncation_is_rejected():
    blob = _small_blob()
    for cut in range(len(blob)):
        with pytest.raises(EntropyCodecError):
            decode_matrices(blob[:cut])
    with pytest.raises(EntropyCodecError):
        decode_matrices(blob + b"\x00\x00")  # padded


def test_every_altered_byte_is_rejected():
    blob = _small_blob()
    for i in range(len(blob)):
        for flip in (0x01, 0x80):
            altered = bytearray(blob)
            altered[i] ^= flip
            with pytest.raises(EntropyCodecError):
                decode_matrices(bytes(altered))


def test_wrong_magic_and_version_are_named():
    blob = _small_blob()
    with pytest.raises(EntropyCodecError, match="wrong magic"):
        decode_matrices(b"XXXX" + blob[4:])
    with pytest.raises(EntropyCodecError, match="version 9"):
        decode_matrices(blob[:4] + b"\x09" + blob[5:])
    with pytest.raises(EntropyCodecError, match="truncated"):
        decode_matrices(b"")


# ---------------------------------------------------------------- as the artifact's "rans" compressor


@pytest.fixture(scope="module")
def official_stored():
    import torch

    from conftest import DATA
    from pgolf.config import QuantConfig
    from pgolf.storage import quantize_state_dict

    state = torch.load(f"{DATA}/official_tiny/final_model.pt", weights_only=True)
    # int6 matrices beside fp16 ones in the same groups, so frames mix coded symbols and other bytes
    quant = QuantConfig(bits={"*": 6, "tok_emb.weight": 8, "*.c_k.weight": 16}, clip={"*": 12.85}, keep_float_max_numel=0)
    return quantize_state_dict(state, quant)


def test_rans_artifact_round_trips_exactly_and_is_smaller(official_stored):
    from pgolf.artifact import pack, unpack

    blob, sizes = pack(official_stored, {"m": 1}, "rans", 22)
    meta, back = unpack(blob)
    assert meta == {"m": 1} and sum(sizes.values()) == len(blob)
    for a, b in zip(official_stored, back):
        for role in ("q", "scale", "data"):
            x, y = getattr(a, role), getattr(b, role)
            assert (x is None and y is None) or (x.dtype == y.dtype and np.array_equal(x.reshape(y.shape), y)), (a.name, role)
    _, zstd_sizes = pack(official_stored, {"m": 1}, "zstd", 22)
    for group in ("embedding", "attention", "mlp"):
        assert sizes[group] < zstd_sizes[group], group


def test_rans_artifact_rejects_altered_frames(official_stored):
    from pgolf.artifact import ArtifactError, pack, unpack

    blob, _ = pack(official_stored[:8], {}, "rans", 3)
    for pos in (60, len(blob) // 2, len(blob) - 3):
        altered = bytearray(blob)
        altered[pos] ^= 0x10
        with pytest.raises(ArtifactError):
            unpack(bytes(altered))


def test_the_script_carries_the_codec_only_when_its_config_chooses_rans():
    from conftest import small_config
    from pgolf.assemble import assemble_script
    from pgolf.config import config_to_dict

    plain = assemble_script(config_to_dict(small_config()))
    coded = assemble_script(config_to_dict(small_config(quant=dict(compressor="rans"))))
    assert "def decode_matrices(" not in plain
    assert "def decode_matrices(" in coded
    compile(coded, "train_gpt.py", "exec")


def test_exported_script_with_rans_trains_standalone_and_scores_its_model(tmp_path):
    import json
    import os
    import re

    from conftest import SHARDS, TOKENIZER, run_cli, small_config
    from pgolf.artifact import PREFIX, unpack
    from pgolf.assemble import assemble_script
    from pgolf.config import config_to_dict

    config = small_config(model=dict(num_layers=1, model_dim=32), train=dict(iterations=3),
                          quant=dict(bits={"*": 6}, clip={"*": 12.85}, compressor="rans"))
    folder = tmp_path / "submission"
    folder.mkdir()
    (folder / "train_gpt.py").write_text(assemble_script(config_to_dict(config)))
    env = {"DATA_PATH": SHARDS, "TOKENIZER_PATH": TOKENIZER, "ITERATIONS": "3", "MAX_WALLCLOCK_SECONDS": "0",
           "PYTHONPATH": "", "DEVICE": "cpu"}
    result = run_cli("train_gpt", cwd=folder, env=env)
    assert result.returncode == 0, result.stderr
    assert re.search(r"final_roundtrip_exact val_loss:\S+ val_bpb:\S+", result.stdout), result.stdout[-2000:]
    blob = (folder / "final_model.pgolf").read_bytes()
    assert PREFIX.unpack_from(blob)[2] == 3  # the rans compressor id
    _, stored = unpack(blob)
    assert any(e.kind == "int" and e.bits == 6 for e in stored)
    assert json.loads((folder / "final_model.pgolf.result.json").read_text())
    assert os.path.getsize(folder / "final_model.pgolf") == len(blob)


def test_a_frame_puts_the_other_bytes_back_around_the_matrices():
    from pgolf.entropy_codec import decode_frame, encode_frame

    rng = np.random.default_rng(5)
    a, b = _gaussian_symbols(rng, (8, 12), 5), _gaussian_symbols(rng, (3, 4), 3)
    raw = b"head" + a.tobytes() + b"\x01\x02middle" + b.tobytes() + b"tail"
    frame = encode_frame(raw, [(4, a, 5), (4 + a.size + 8, b, 3)], 3)
    assert decode_frame(frame, len(raw)) == raw
    assert decode_frame(encode_frame(b"no matrices", [], 3), 11) == b"no matrices"
    for cut in range(0, len(frame), 7):
        with pytest.raises(EntropyCodecError):
            decode_frame(frame[:cut], len(raw))
    with pytest.raises(EntropyCodecError):
        decode_frame(frame, len(raw) + 1)
    with pytest.raises(EntropyCodecError, match="does not lie in the frame"):
        encode_frame(raw, [(5, a, 5)], 3)


def test_a_vector_pays_no_per_column_classes():
    rng = np.random.default_rng(6)
    row = _gaussian_symbols(rng, (1, 20_000), 6, column_spread=False)
    blob = _round_trip([row], [6])
    assert len(blob) < 1.01 * _order0_bytes([row]) + 200  # 4 bits a column would be +13%
