import struct

import pytest
import torch

from pgolf.artifact import ArtifactError, pack, unpack
from pgolf.config import QuantConfig
from pgolf.quant import quantize_tensor, symbol_entropy_bits, tensor_group
from pgolf.storage import dequantize_state_dict, quantize_state_dict

from conftest import DATA


@pytest.fixture(scope="module")
def official_state():
    return torch.load(f"{DATA}/official_tiny/final_model.pt", weights_only=True)


def quantized(state, **kw):
    return quantize_state_dict(state, QuantConfig(**kw))


def test_pack_unpack_is_exact(official_state):
    stored = quantized(official_state, bits={"*": 6, "tok_emb.weight": 8}, clip={"*": 12.85}, keep_float_max_numel=0)
    blob, sizes = pack(stored, {"hello": [1, 2]}, "zstd", 3)
    meta, back = unpack(blob)
    assert meta == {"hello": [1, 2]} and sum(sizes.values()) == len(blob)
    a, b = dequantize_state_dict(stored), dequantize_state_dict(back)
    assert all(torch.equal(a[k], b[k]) and a[k].dtype == official_state[k].dtype for k in official_state)
    for entry in back:
        if entry.kind == "int":
            limit = 2 ** (entry.bits - 1) - 1
            assert entry.q.min() >= -limit and entry.q.max() <= limit


def test_official_int8_rule_keeps_small_tensors_float(official_state):
    stored = {e.name: e for e in quantized(official_state)}
    assert stored["blocks.0.attn.c_q.weight"].kind == "float16"  # 65,536 elements: kept, as the official export does
    assert stored["blocks.0.mlp.fc.weight"].kind == "int" and stored["blocks.0.mlp.fc.weight"].bits == 8
    assert stored["blocks.0.attn_scale"].kind == "float32"
    assert stored["tok_emb.weight"].dtype == "bfloat16"


def test_quantization_error_shrinks_with_bits():
    torch.manual_seed(0)
    w = torch.randn(64, 256) * 0.05
    errors = []
    for bits in (2, 4, 6, 8):
        q, s = quantize_tensor(w, bits, clip_k=12.85, clip_percentile=99.99984)
        errors.append(float((q.float() * s.float()[:, None] - w).pow(2).mean()))
    assert errors == sorted(errors, reverse=True)


def test_lzma_and_zstd_both_round_trip(official_state):
    stored = quantized(official_state)
    for compressor, level in (("zstd", 22), ("lzma", 6)):
        blob, _ = pack(stored, {}, compressor, level)
        assert len(unpack(blob)[1]) == len(stored)


def test_entropy_is_a_lower_bound_on_int_bytes(official_state):
    stored = quantized(official_state, bits={"*": 6}, clip={"*": 12.85}, keep_float_max_numel=0)
    _, sizes = pack(stored, {}, "zstd", 22)
    int_bytes = sizes["embedding"] + sizes["attention"] + sizes["mlp"]
    assert int_bytes >= 0.97 * symbol_entropy_bits(stored) / 8


@pytest.fixture(scope="module")
def blob(official_state):
    return pack(quantized(official_state), {"m": 1}, "zstd", 3)[0]


def test_truncated_file_is_rejected(blob):
    for cut in (5, 30, len(blob) // 2, len(blob) - 1):
        with pytest.raises(ArtifactError, match="truncated"):
            unpack(blob[:cut])


def test_padding_wrong_magic_and_version_are_rejected(blob):
    with pytest.raises(ArtifactError, match="padded"):
        unpack(blob + b"\0")
    with pytest.raises(ArtifactError, match="wrong magic"):
        unpack(b"X" + blob[1:])
    with pytest.raises(ArtifactError, match="unsupported model file version 9"):
        unpack(blob[:8] + struct.pack("<H", 9) + blob[10:])


def test_altered_bytes_are_rejected(blob):
    altered = bytearray(blob)
    altered[-100] ^= 0x01
    with pytest.raises(ArtifactError, match="corrupt|checksum"):
        unpack(bytes(altered))


def test_groups():
    assert tensor_group("tok_emb.weight") == "embedding"
    assert tensor_group("blocks.3.attn.c_k.weight") == "attention"
    assert tensor_group("blocks.3.mlp.proj.weight") == "mlp"
    assert tensor_group("blocks.3.attn.q_gain") == "other"
    assert tensor_group("skip_weights") == "other"
