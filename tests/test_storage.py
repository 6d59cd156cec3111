"""Matrix storage formats (pgolf/storage.py) on real weights: exact round trips through the model file,
outliers kept exactly, GPTQ's error feedback around them, the low-rank correction, calibration on
training tokens only, shared blocks, refusals of impossible settings, and the exported script."""

import dataclasses
import hashlib
import json
import os
import re

import numpy as np
import pytest
import torch
import zstandard

from pgolf.artifact import FRAME, PREFIX, ArtifactError, pack, unpack
from pgolf.assemble import assemble_script
from pgolf.checkpoint import load_any_checkpoint
from pgolf.config import QuantConfig, config_from_dict, config_to_dict
from pgolf.datasets import DataPaths
from pgolf.gptq import CalibrationError, calibration_batches, collect_hessians, gptq_quantize
from pgolf.model import GPT
from pgolf.quant import dequantize_tensor, quantize_tensor, row_scales
from pgolf.shards import TokenStream, read_shard, shard_files, write_shard
from pgolf.storage import MatrixFormat, dequantize_state_dict, quantize_state_dict, restore_matrix, store_matrix
from pgolf.submission import export_model, export_trained, model_meta

from conftest import DATA, SHARDS, TOKENIZER, TRAIN_PATTERN, VAL_PATTERN, run_cli, small_config

OFFICIAL = os.path.join(DATA, "official_tiny", "final_model.pt")
# Real layers of the official checkpoint: the tied (bf16) embedding, an attention and an MLP matrix.
MATRICES = ("tok_emb.weight", "blocks.0.attn.c_q.weight", "blocks.1.mlp.proj.weight")
FORMATS = {
    "rtn": {},
    "gptq": {"quantizer": {"*": "gptq"}},
    "awq 0.5": {"awq": {"*": 0.5}},
    "outliers 0.005": {"outliers": {"*": 0.005}},
    "rank 4 fp16": {"rank": {"*": 4}},
    "rank 4 int8": {"rank": {"*": 4}, "rank_bits": 8},
    "all combined": {"quantizer": {"*": "gptq"}, "awq": {"*": 0.5}, "outliers": {"*": 0.005}, "rank": {"*": 4}, "rank_bits": 8},
}
PLAIN_KEYS = {"name", "kind", "shape", "dtype", "bits", "clip", "arrays"}


def quant(**kw) -> QuantConfig:
    return QuantConfig(keep_float_max_numel=0, bits={"*": 6}, **kw)


def directory(blob: bytes) -> dict:
    """The JSON directory (frame 0) of a model file, read without the loader."""
    count = PREFIX.unpack_from(blob, 0)[3]
    raw_len, comp_len, _ = FRAME.unpack_from(blob, PREFIX.size)
    start = PREFIX.size + count * FRAME.size
    return json.loads(zstandard.ZstdDecompressor().decompress(blob[start : start + comp_len], max_output_size=raw_len))


def output_error(delta: torch.Tensor, hessian: torch.Tensor) -> float:
    d = delta.double()
    return float(torch.einsum("ij,jk,ik->", d, hessian.double(), d))


@pytest.fixture(scope="module")
def official():
    """(state dict of real tensors, H, rows) with H from the first 1,024 training tokens."""
    model, _ = load_any_checkpoint(OFFICIAL, seq_len=256)
    model = model.float()
    hessians, rows = collect_hessians(model, calibration_batches(TRAIN_PATTERN, 1024, 256, 1024), MATRICES)
    full = model.state_dict()
    state = {name: full[name] for name in MATRICES}
    state["tok_emb.weight"] = full["tok_emb.weight"].to(torch.bfloat16)  # as the official file holds it
    state["blocks.0.attn_scale"] = full["blocks.0.attn_scale"]  # a control tensor: stays float32
    return state, hessians, rows


@pytest.fixture(scope="module")
def stored(official):
    """Each format's stored tensors (quantized once for the module)."""
    state, hessians, rows = official
    return {label: quantize_state_dict(state, quant(**kw), hessians, rows) for label, kw in FORMATS.items()}


@pytest.mark.parametrize("label", list(FORMATS))
def test_every_format_round_trips_exactly_through_the_model_file(official, stored, label):
    state = official[0]
    entries = stored[label]
    before = dequantize_state_dict(entries)
    blob, sizes = pack(entries, {"m": 1}, "zstd", 3)
    meta, back = unpack(blob)
    after = dequantize_state_dict(back)
    assert meta == {"m": 1} and sum(sizes.values()) == len(blob) and set(after) == set(state)
    for name in state:
        assert torch.equal(before[name], after[name]), name
        assert after[name].dtype == state[name].dtype and after[name].shape == state[name].shape
    kw = FORMATS[label]
    fmt = {"quantizer": kw.get("quantizer", {"*": "rtn"})["*"], "awq": kw.get("awq", {"*": 0.0})["*"],
           "outliers": kw.get("outliers", {"*": 0.0})["*"], "rank": kw.get("rank", {"*": 0})["*"]}
    for item in directory(blob)["tensors"]:
        roles = {a[0] for a in item["arrays"]}
        if item["name"] not in MATRICES:
            assert set(item) == PLAIN_KEYS and roles == {"data"}
            continue
        assert item.get("format", {"quantizer": "rtn", "awq": 0.0, "outliers": 0.0, "rank": 0}) == fmt
        assert ("format" in item) == (label != "rtn")
        expected = {"q", "scale"} | ({"col_scale"} if fmt["awq"] else set()) \
            | ({"outlier_gaps", "outlier_values"} if fmt["outliers"] else set()) \
            | ({"lr_a", "lr_b"} if fmt["rank"] else set()) | ({"lr_a_scale", "lr_b_scale"} if kw.get("rank_bits") == 8 else set())
        assert roles == expected, (item["name"], roles)
    for entry in back:
        if entry.kind == "int":
            limit = 2 ** (entry.bits - 1) - 1
            assert entry.bits == 6 and -limit <= entry.q.min() and entry.q.max() <= limit


def test_outliers_restore_the_exact_fp16_values_of_the_largest_weights(official, stored):
    state = official[0]
    restored = dequantize_state_dict(unpack(pack(stored["outliers 0.005"], {}, "zstd", 3)[0])[1])
    plain = dequantize_state_dict(stored["rtn"])
    for entry in stored["outliers 0.005"]:
        if entry.name not in MATRICES:
            continue
        w = state[entry.name]
        positions = torch.from_numpy(entry.outlier_gaps.astype(np.int64)).cumsum(0)
        assert positions.numel() == round(w.numel() * 0.005) and entry.outlier_gaps.dtype == np.uint16
        assert bool((positions[1:] > positions[:-1]).all())
        magnitude = w.float().abs().reshape(-1)
        others = torch.ones_like(magnitude, dtype=torch.bool)
        others[positions] = False
        assert float(magnitude[positions].min()) >= float(magnitude[others].max())  # exactly the largest ones
        exact = w.to(torch.float16).to(w.dtype).reshape(-1)[positions]
        assert torch.equal(restored[entry.name].reshape(-1)[positions], exact), entry.name
        assert bool((torch.from_numpy(entry.q).reshape(-1)[positions] == 0).all())
        # The rest is no worse off than plain RTN: the outliers no longer stretch its row scales.
        rest = lambda t: (t.float() - w.float()).reshape(-1)[others].pow(2).sum()  # noqa: E731
        assert float(rest(restored[entry.name])) <= float(rest(plain[entry.name])) * 1.001


def test_awq_outliers_are_the_largest_scaled_weights_restored_in_the_matrix_own_space(official):
    state, hessians, rows = official
    entries = quantize_state_dict(state, quant(awq={"*": 0.5}, outliers={"*": 0.005}), hessians, rows)
    restored = dequantize_state_dict(unpack(pack(entries, {}, "zstd", 3)[0])[1])
    for entry in entries:
        if entry.name not in MATRICES:
            continue
        w = state[entry.name].float()
        col = torch.from_numpy(entry.col_scale).float()
        positions = torch.from_numpy(entry.outlier_gaps.astype(np.int64)).cumsum(0)
        scaled = (w * col[None, :]).abs().reshape(-1)
        others = torch.ones_like(scaled, dtype=torch.bool)
        others[positions] = False
        assert float(scaled[positions].min()) >= float(scaled[others].max())
        got, want = restored[entry.name].float().reshape(-1)[positions], w.reshape(-1)[positions]
        assert bool(((got - want).abs() <= want.abs() * 2.0 ** -9).all()), entry.name  # two fp16 roundings at most


def test_far_apart_outliers_are_stored_as_uint32_gaps_and_restored_exactly():
    torch.manual_seed(0)
    w = torch.randn(512, 512) * 0.02
    spots = [0, 100_000, 512 * 512 - 1]
    w.view(-1)[spots] = torch.tensor([3.0, -5.0, 7.0])
    stored = quantize_state_dict({"blocks.0.mlp.fc.weight": w}, quant(outliers={"*": 3 / w.numel()}))
    assert stored[0].outlier_gaps.dtype == np.uint32 and stored[0].outlier_gaps.tolist() == [0, 100_000, 512 * 512 - 1 - 100_000]
    back = dequantize_state_dict(unpack(pack(stored, {}, "zstd", 3)[0])[1])["blocks.0.mlp.fc.weight"]
    assert back.view(-1)[spots].tolist() == [3.0, -5.0, 7.0]


def test_low_rank_correction_reduces_the_error(official, stored):
    state, hessians, rows = official
    results = {label: dequantize_state_dict(stored[label]) for label in ("rtn", "rank 4 fp16", "rank 4 int8")}
    for name in MATRICES:
        w = state[name].float()
        error = {label: float((r[name].float() - w).pow(2).sum()) for label, r in results.items()}
        assert error["rank 4 fp16"] < 0.99 * error["rtn"] and error["rank 4 int8"] < 0.99 * error["rtn"], (name, error)
        # The correction fits the output error (inputs weighted by their rms activation): that falls too.
        out = {label: output_error(r[name].float() - w, hessians[name]) for label, r in results.items()}
        assert out["rank 4 fp16"] < 0.99 * out["rtn"] and out["rank 4 int8"] < 0.99 * out["rtn"], (name, out)


def test_a_plain_config_writes_the_same_bytes_as_before_and_no_format():
    torch.manual_seed(0)
    config = small_config()
    model = GPT(config.model)
    spelled = config_to_dict(config)
    spelled["quant"].update(quantizer={"*": "rtn"}, awq={"*": 0.0}, outliers={"*": 0.0}, rank={"*": 0}, rank_bits=16,
                            calib_tokens=65_536, gptq_damp=0.01, gptq_block=128, gptq_act_order=True)
    defaults = config_to_dict(config)
    for key in ("quantizer", "awq", "outliers", "rank", "rank_bits", "calib_tokens", "gptq_damp", "gptq_block", "gptq_act_order"):
        del defaults["quant"][key]
    blob = export_model(model, config_from_dict(defaults))[0]
    assert blob == export_model(model, config_from_dict(spelled))[0]
    # A pattern that names a format only for tensors that do not exist changes nothing either.
    assert blob == export_model(model, dataclasses.replace(config, quant=dataclasses.replace(
        config.quant, quantizer={"*": "rtn", "nothing.*": "gptq"}, outliers={"nothing.*": 0.01})))[0]
    for item in directory(blob)["tensors"]:
        assert set(item) == PLAIN_KEYS, item
        assert {a[0] for a in item["arrays"]} <= {"q", "scale", "data"}
    # The symbols are exactly plain RTN's.
    state = model.state_dict()
    for entry in unpack(blob)[1]:
        if entry.kind == "int" and entry.q.ndim == 2:
            q, scale = quantize_tensor(state[entry.name], entry.bits, entry.clip, config.quant.clip_percentile)
            assert np.array_equal(entry.q, q.numpy()) and np.array_equal(entry.scale, scale.numpy())


def test_unpack_validates_outlier_positions_and_factor_shapes(stored):
    entries = stored["outliers 0.005"]
    index = next(i for i, e in enumerate(entries) if e.name == "blocks.0.attn.c_q.weight")
    entry = entries[index]
    numel = 256 * 256

    def packed(**changes):
        return pack(entries[:index] + [dataclasses.replace(entry, **changes)] + entries[index + 1 :], {}, "zstd", 3)[0]

    def gaps_ending_at(last):
        gaps = entry.outlier_gaps.astype(np.uint32)
        gaps[-1] += last - int(gaps.astype(np.int64).sum())
        return gaps

    back = dequantize_state_dict(unpack(packed(outlier_gaps=gaps_ending_at(numel - 1)))[1])["blocks.0.attn.c_q.weight"]
    assert float(back.view(-1)[numel - 1]) == float(entry.outlier_values[-1])  # the last position is in range
    with pytest.raises(ArtifactError, match=rf"outlier position {numel:,} is out of range for a 256 x 256 matrix"):
        unpack(packed(outlier_gaps=gaps_ending_at(numel)))
    repeated = entry.outlier_gaps.copy()
    repeated[3] = 0
    with pytest.raises(ArtifactError, match="outlier positions repeat"):
        unpack(packed(outlier_gaps=repeated))
    with pytest.raises(ArtifactError, match="outlier positions and values do not match"):
        unpack(packed(outlier_values=entry.outlier_values[:-1]))
    with pytest.raises(ArtifactError, match="outlier positions and values do not match"):
        unpack(packed(outlier_gaps=entry.outlier_gaps.astype(np.int32)))
    with pytest.raises(ArtifactError, match="must come together"):
        unpack(packed(outlier_values=None))

    ranked = next(e for e in stored["rank 4 int8"] if e.name == "blocks.0.attn.c_q.weight")
    others = [e for e in stored["rank 4 int8"] if e.name != ranked.name]
    with pytest.raises(ArtifactError, match=r"low-rank factors \[256, 4\] x \[4, 255\] do not fit 256 x 256"):
        unpack(pack(others + [dataclasses.replace(ranked, lr_b=ranked.lr_b[:, :-1])], {}, "zstd", 3)[0])
    with pytest.raises(ArtifactError, match=r"low-rank factors \[256, 4\] x \[3, 256\] do not fit"):
        unpack(pack(others + [dataclasses.replace(ranked, lr_b=ranked.lr_b[:-1], lr_b_scale=ranked.lr_b_scale[:-1])], {}, "zstd", 3)[0])
    with pytest.raises(ArtifactError, match="int8 low-rank factors need one scale per row"):
        unpack(pack(others + [dataclasses.replace(ranked, lr_b_scale=None)], {}, "zstd", 3)[0])
    with pytest.raises(ArtifactError, match="low-rank correction needs both factors"):
        unpack(pack(others + [dataclasses.replace(ranked, lr_b=None, lr_b_scale=None)], {}, "zstd", 3)[0])
    awq = next(e for e in stored["awq 0.5"] if e.name == "blocks.0.attn.c_q.weight")
    bad = awq.col_scale.copy()
    bad[7] = 0
    with pytest.raises(ArtifactError, match="channel scales do not match 256 positive input channels"):
        unpack(pack([dataclasses.replace(awq, col_scale=bad)], {}, "zstd", 3)[0])


# ---------------------------------------------------------------- GPTQ around kept outliers


def reference_updates(w, hessian, restored, damp=0.01, act_order=True):
    """The value each weight had when GPTQ reached its column, recomputed in fp64 column by column from the
    restored values GPTQ chose (no blocking, so no cascade of rounding differences)."""
    H = hessian.double().clone()
    W = w.double().clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H += damp * torch.diag(H).mean() * torch.eye(H.shape[0], dtype=H.dtype)
    perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(H.shape[0])
    W, H, R = W[:, perm], H[perm][:, perm], restored.double()[:, perm]
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    updated = torch.zeros_like(W)
    for i in range(W.shape[1]):
        updated[:, i] = W[:, i]
        error = (W[:, i] - R[:, i]) / U[i, i]
        W[:, i + 1 :] -= error[:, None] * U[i : i + 1, i + 1 :]
    return updated[:, torch.argsort(perm)]


def top_mask(w: torch.Tensor, count: int) -> torch.Tensor:
    keep = torch.zeros(w.numel(), dtype=torch.bool)
    keep[torch.topk(w.abs().reshape(-1), count).indices] = True
    return keep.view_as(w)


@pytest.mark.parametrize("act_order", [True, False])
def test_gptq_keeps_outliers_at_the_fp16_of_their_updated_value(official, act_order):
    state, hessians, _ = official
    name = "blocks.1.mlp.proj.weight"
    w, h = state[name].float(), hessians[name]
    keep = top_mask(w, 655)
    scale = row_scales(w.masked_fill(keep, 0.0), 6, 0.0, 99.99984)
    q, scale16, kept = gptq_quantize(w, h, 6, 0.0, 99.99984, act_order=act_order, scale=scale, keep=keep)
    assert bool((q[keep] == 0).all()) and bool((kept[~keep] == 0).all())
    assert torch.equal(kept, kept.half().float())  # fp16 values
    restored = torch.where(keep, kept, dequantize_tensor(q, scale16, torch.float32))
    updated = reference_updates(w, h, restored, act_order=act_order)
    want = updated[keep].half().double()
    ulp = want.abs() * 2.0 ** -10
    # The kept value is the fp16 rounding of the weight as updated so far: at most an fp16 step off
    # from the fp64 recomputation (where it sits on a rounding boundary), mostly identical.
    assert bool(((kept[keep].double() - want).abs() <= ulp).all())
    assert float((kept[keep].double() == want).double().mean()) > 0.98
    # The other symbols are the rounding of their updated values too (the feedback reached them).
    others = torch.clamp(torch.round(updated / scale16.double()[:, None]), -31, 31)[~keep]
    assert float((others == q[~keep].double()).double().mean()) > 0.999
    # And keeping the outliers lowers the output error of GPTQ without them.
    q0, s0, _ = gptq_quantize(w, h, 6, 0.0, 99.99984, act_order=act_order)
    assert output_error(restored - w, h) < output_error(dequantize_tensor(q0, s0, torch.float32) - w, h)


def test_gptq_without_feedback_keeps_the_outliers_exactly():
    """With uncorrelated inputs (diagonal H) there is no error feedback: the kept values are the weights' fp16."""
    torch.manual_seed(1)
    w = torch.randn(48, 96) * 0.03
    w[5, 7], w[40, 90], w[0, 0] = 1.5, -2.25, 0.0123456789
    h = torch.diag(torch.rand(96) + 0.5).double()
    keep = top_mask(w, 2)
    keep[0, 0] = True  # any mask, not only the largest weights
    q, scale, kept = gptq_quantize(w, h, 4, 0.0, 99.99984, scale=row_scales(w.masked_fill(keep, 0.0), 4, 0.0, 99.99984), keep=keep)
    assert torch.equal(kept[keep], w[keep].half().float()) and bool((q[keep] == 0).all())
    rtn, _ = quantize_tensor(w.masked_fill(keep, 0.0), 4, 0.0, 99.99984)
    assert torch.equal(q[~keep], rtn[~keep])


def test_stored_gptq_outliers_are_restored_as_stored(official, stored):
    for entry in stored["all combined"]:
        if entry.name not in MATRICES:
            continue
        positions = torch.from_numpy(entry.outlier_gaps.astype(np.int64)).cumsum(0)
        assert bool((torch.from_numpy(entry.q).reshape(-1)[positions] == 0).all())
        plain = dataclasses.replace(entry, lr_a=None, lr_b=None, lr_a_scale=None, lr_b_scale=None)
        values = restore_matrix(plain, torch.float32).reshape(-1)[positions]
        assert torch.equal(values, torch.from_numpy(entry.outlier_values).float()), entry.name


def test_formats_needing_calibration_refuse_to_store_without_it():
    entry = quantize_state_dict({"blocks.0.mlp.fc.weight": torch.randn(64, 64)}, quant())[0]
    with pytest.raises(ValueError, match="needs calibration activations"):
        store_matrix(entry, torch.randn(64, 64), MatrixFormat(6, 0.0, quantizer="gptq"), 99.99984)


# ---------------------------------------------------------------- calibration


def test_calibration_never_reads_validation_tokens():
    with pytest.raises(CalibrationError, match="training shards only"):
        next(calibration_batches(VAL_PATTERN, 1024, 256, 4096))
    both = os.path.join(SHARDS, "fineweb_*_000000.bin")  # matches the train and the val shard
    assert len(shard_files(both)) == 2
    with pytest.raises(CalibrationError, match="training shards only"):
        next(calibration_batches(both, 1024, 256, 4096))


def test_calibration_batches_are_the_first_tokens_of_the_training_stream(tmp_path):
    # Two training shards (the real train shard cut in two) and the real val shard beside them.
    train = read_shard(shard_files(TRAIN_PATTERN)[0])
    write_shard(str(tmp_path / "fineweb_train_000000.bin"), train[:3000])
    write_shard(str(tmp_path / "fineweb_train_000001.bin"), train[3000:6000])
    write_shard(str(tmp_path / "fineweb_val_000000.bin"), read_shard(shard_files(VAL_PATTERN)[0])[:4096])
    pattern = str(tmp_path / "fineweb_train_*.bin")
    batches = list(calibration_batches(pattern, 1024, 256, 5120, batch_seqs=8))  # 20 sequences, across the shard boundary
    expected = TokenStream(pattern, 1024).take(20 * 256 + 1)
    x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    assert [len(b[0]) for b in batches] == [8, 8, 4]
    assert torch.equal(x.reshape(-1), expected[:-1]) and torch.equal(y.reshape(-1), expected[1:])
    assert torch.equal(expected, torch.from_numpy(train[: 20 * 256 + 1].astype(np.int64)))
    assert len(list(calibration_batches(pattern, 1024, 256, 6000))) == 2  # 23 sequences + 1 target token: 5,889 of 6,000
    with pytest.raises(CalibrationError, match=r"asks for 6,144 tokens but the training shards .* hold 6,000"):
        next(calibration_batches(pattern, 1024, 256, 6144))  # 24 sequences + 1: one token more than both shards hold
    with pytest.raises(CalibrationError, match=r"asks for 1,000,000 tokens but the training shards .*fineweb_train_\*\.bin hold 912,010"):
        next(calibration_batches(TRAIN_PATTERN, 1024, 256, 1_000_000))
    with pytest.raises(CalibrationError, match=r"at least one sequence of 256 tokens, asked for 100"):
        next(calibration_batches(TRAIN_PATTERN, 1024, 256, 100))


def test_export_counts_calibration_only_when_a_format_calibrates():
    torch.manual_seed(0)
    plain = small_config()
    model = GPT(plain.model)
    assert export_trained(model, plain, TRAIN_PATTERN, torch.device("cpu"))[3] == 0.0
    gptq = small_config(quant=dict(quantizer={"*": "gptq"}, calib_tokens=1024))
    blob, _, stored, seconds = export_trained(model, gptq, TRAIN_PATTERN, torch.device("cpu"))
    assert seconds > 0 and {e.quantizer for e in stored if e.kind == "int" and e.q.ndim == 2} == {"gptq"}


def test_pgolf_run_refuses_an_impossible_calibration_before_training(tmp_path):
    out = tmp_path / "X"
    done = run_cli("pgolf.cli", "run", "tiny", "--set", "train.iterations=2", "--set", 'quant.quantizer={"*"="gptq"}',
                   "--set", "quant.calib_tokens=100000000", "--device", "cpu", "--out", str(out))
    lines = done.stderr.strip().splitlines()
    assert done.returncode != 0 and len(lines) == 1, done.stderr
    assert re.search(r"^pgolf: error: calibration asks for 100,000,000 tokens but the training shards .* hold 912,010$", lines[0]), lines
    assert not out.exists() and "step" not in done.stdout and "trained" not in done.stdout


# ---------------------------------------------------------------- shared blocks


def test_a_looped_block_collects_every_repeat():
    config = small_config(model=dict(num_layers=2, loop_start=1, loop_len=1, loop_repeats=2))
    torch.manual_seed(0)
    model = GPT(config.model)
    with torch.no_grad():  # as after training: no zero-initialised projection leaves a block the identity
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    batches = list(calibration_batches(TRAIN_PATTERN, 1024, 64, 1024))
    hessians, rows = collect_hessians(model, batches)
    linears = [n[len("blocks.0."):] for n in rows if n.startswith("blocks.0.")]
    assert len(linears) >= 6 and rows["tok_emb.weight"] == 1024
    for name in linears:
        assert rows[f"blocks.1.{name}"] == 2 * rows[f"blocks.0.{name}"] == 2 * 1024, name
    # H of the looped block is the sum over both of its runs, each with its own inputs.
    seen = []
    hook = model.blocks[1].attn.c_q.register_forward_pre_hook(
        lambda mod, args: seen.append(args[0].detach().reshape(-1, args[0].shape[-1]).double()))
    model.eval()
    with torch.no_grad():
        for x, _ in batches:
            model.projection_input(x)
    hook.remove()
    assert len(seen) == 2 * len(batches) and not torch.allclose(seen[0], seen[1])
    expected = sum(x.T @ x for x in seen)
    assert torch.allclose(hessians["blocks.1.attn.c_q.weight"], expected, rtol=1e-10, atol=1e-8)


# ---------------------------------------------------------------- bad settings


@pytest.mark.parametrize("override, pattern", [
    ('quant.outliers={"*"=0.5}', r"quant\.outliers\['\*'\] = 0\.5: must be a fraction in \[0, 0\.05\]"),
    ('quant.rank={"*"=-1}', r"quant\.rank\['\*'\] = -1: must be an integer in \[0, 64\]"),
    ('quant.rank={"*"=1000}', r"quant\.rank\['\*'\] = 1000: must be an integer in \[0, 64\]"),
    ('quant.quantizer={"*"="foo"}', r"quant\.quantizer\['\*'\] = 'foo': allowed are rtn, gptq"),
    ('quant.awq={"*"=2}', r"quant\.awq\['\*'\] = 2: must be an exponent in \[0, 1\]"),
    ("quant.rank_bits=4", r"quant\.rank_bits must be 8 or 16, got 4"),
    ("quant.calib_tokens=0", r"quant\.calib_tokens must be positive, got 0"),
])
def test_pgolf_run_refuses_impossible_formats_in_one_line(override, pattern, tmp_path, capsys):
    from pgolf import cli

    out = tmp_path / "X"
    capsys.readouterr()
    code = cli.main(["run", "tiny", "--set", override, "--device", "cpu", "--out", str(out)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(lines) == 1 and re.search(f"^pgolf: error: .*{pattern}", lines[0]), lines
    assert not out.exists()


# ---------------------------------------------------------------- the exported script


def test_exported_script_with_gptq_outliers_and_rank_trains_standalone_and_verifies(tmp_path):
    from search.submit.verify import verify

    config = small_config(model=dict(num_layers=1, model_dim=32), train=dict(iterations=3),
                          quant=dict(bits={"*": 6}, quantizer={"*": "gptq"}, outliers={"*": 0.005}, rank={"*": 4},
                                     rank_bits=8, calib_tokens=4096))
    shards = tmp_path / "data"  # the real train shard; the first 16k val tokens, to score quickly
    shards.mkdir()
    os.symlink(shard_files(TRAIN_PATTERN)[0], shards / "fineweb_train_000000.bin")
    write_shard(str(shards / "fineweb_val_000000.bin"), read_shard(shard_files(VAL_PATTERN)[0])[:16_385])
    folder = tmp_path / "submission"
    folder.mkdir()
    (folder / "train_gpt.py").write_text(assemble_script(config_to_dict(config)))
    env = {"DATA_PATH": str(shards), "TOKENIZER_PATH": TOKENIZER, "ITERATIONS": "3", "MAX_WALLCLOCK_SECONDS": "0",
           "PYTHONPATH": "", "DEVICE": "cpu"}
    trained = run_cli("train_gpt", cwd=folder, env=env)
    assert trained.returncode == 0, trained.stderr
    assert "trained steps:3" in trained.stdout
    first = re.search(r"trained steps:3 train_time:([\d.]+)s", trained.stdout)
    counted = re.search(r"calibration and quantization: ([\d.]+)s \(counted as training\) train_time:([\d.]+)s", trained.stdout)
    assert first and counted, trained.stdout
    record = json.loads((folder / "final_model.pgolf.result.json").read_text())
    # both lines print one decimal, so compare within its rounding
    assert record["train_seconds"] >= float(first.group(1)) - 0.051 and abs(record["train_seconds"] - float(counted.group(2))) < 0.051
    blob = (folder / "final_model.pgolf").read_bytes()
    assert record["model_sha256"] == hashlib.sha256(blob).hexdigest()
    formats = {item["name"]: item.get("format") for item in directory(blob)["tensors"] if item["kind"] == "int"}
    assert formats and all(f == {"quantizer": "gptq", "awq": 0.0, "outliers": 0.005, "rank": 4} for f in formats.values()), formats
    assert "tok_emb.weight" in formats
    (folder / "submission.json").write_text("{}")
    data = DataPaths(str(shards / "fineweb_train_*.bin"), str(shards / "fineweb_val_*.bin"), TOKENIZER, 1024)
    (folder / "pgolf.json").write_text(json.dumps({"cap_bytes": 16_000_000, "data": dataclasses.asdict(data)}))
    report = verify(str(folder), device="cpu")
    assert report["origin"] == "the training run that wrote it" and report["difference"] == 0.0
    assert report["val_bpb"] == record["val_bpb"]
    assert unpack(blob)[0] == model_meta(config)


def test_every_dataclass_that_holds_a_format_has_one_field_per_axis_with_its_default():
    from objectives.bytes import Calibration
    from pgolf.quant import StoredTensor
    from pgolf.storage import FORMAT_AXES, QUANTIZERS, TENSOR_AXES
    from search.allocation.options import FormatChoices, Option
    from space.spec import AllocationSpace

    def defaults(cls) -> dict:
        return {f.name: f.default_factory() if f.default is dataclasses.MISSING else f.default for f in dataclasses.fields(cls)
                if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING}

    for axis in FORMAT_AXES:  # a new axis needs its field in each of these, with the axis's default
        assert defaults(MatrixFormat).get(axis.name) == axis.default, f"MatrixFormat.{axis.name}"
        assert defaults(QuantConfig).get(axis.name) == ({"*": axis.default} if axis.per_tensor else axis.default), f"QuantConfig.{axis.name}"
        assert defaults(AllocationSpace).get(axis.space_key) == ([axis.default] if axis.per_tensor else axis.default), \
            f"AllocationSpace.{axis.space_key}"
        assert defaults(FormatChoices).get(axis.space_key) == ((axis.default,) if axis.per_tensor else axis.default), \
            f"FormatChoices.{axis.space_key}"
        assert axis.valid(axis.default) and not axis.calibrates(axis.default)
    for axis in TENSOR_AXES:
        assert defaults(StoredTensor).get(axis.name) == axis.default, f"StoredTensor.{axis.name}"
        assert defaults(Option).get(axis.name) == axis.default, f"Option.{axis.name}"
    assert [name for name in QUANTIZERS if not Calibration().symbol_bits_ratio(name) > 0] == []  # each has its byte constant
    assert [f.name for f in dataclasses.fields(MatrixFormat)] == ["bits", "clip"] + [a.name for a in FORMAT_AXES]
