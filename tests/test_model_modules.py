"""The record modules of pgolf/model.py: each [model] key does what it says, starts where the records start,
and every one of them on at once goes through training, QAT, GPTQ, storage, the allocation's units, the byte
predictor, torch.compile, DDP and the exported script."""

import dataclasses
import math
import os
import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from objectives.bytes import tensor_infos
from pgolf.assemble import assemble_script
from pgolf.config import MODULE_KEYS, ConfigError, ModelConfig, TrainConfig, config_to_dict, model_settings
from pgolf.fused import fused_ops
from pgolf.gptq import calibration_batches, collect_hessians
from pgolf.model import GPT, apply_rotary, full_precision, is_control_tensor, rms_norm
from pgolf.optim import build_optimizers
from pgolf.shards import TokenStream
from pgolf.storage import dequantize_state_dict
from pgolf.submission import Runtime, export_trained, load_model, score, train_model
from search.allocation import make_units

from conftest import SHARDS, TOKENIZER, TRAIN_PATTERN, VAL_PATTERN, run_cli, small_config

CPU = Runtime(device=torch.device("cpu"))
# Every module on, on a 3-block model whose middle block is a shared segment run twice.
ALL_ON = dict(num_layers=3, loop_start=1, loop_len=1, loop_repeats=2, parallel_last=1, xsa_last=2, smear_gate=True,
              mlp_leaky_slope=0.5, rotary_fraction=0.5, ln_scale=True, attn_gate="sparse", attn_gate_window=8,
              logit_rescale=True, loop_lora_rank=2, loop_boundary_norm=True, embed_rank=16)
LOOP = dict(num_layers=3, loop_start=1, loop_len=1, loop_repeats=2)


def model_of(**model) -> GPT:
    # In fp32 (embedding and rotary tables too): the checks below are exact up to fp32 rounding.
    torch.manual_seed(0)
    return full_precision(GPT(small_config(model=model).model))


def perturbed(model: GPT) -> GPT:
    # As after training: no zero-initialised matrix or gate leaves its module the identity.
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def real_batch(rows: int = 2, seq_len: int = 64, skip: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    stream = TokenStream(TRAIN_PATTERN, 1024)
    if skip:
        stream.take(skip)
    tokens = stream.take(rows * seq_len + 1)
    return tokens[:-1].view(rows, seq_len), tokens[1:].view(rows, seq_len)


def optimizer_of(model: GPT, param) -> str:
    optimizers, muon = build_optimizers(model, TrainConfig())
    owners = [type(o).__name__ for o in optimizers for g in o.param_groups for p in g["params"] if p is param]
    return "/".join(owners) or "none"


def test_with_every_module_on_each_trainable_parameter_has_exactly_one_optimizer():
    model = model_of(**ALL_ON)
    owners = {name: optimizer_of(model, p) for name, p in model.named_parameters() if p.requires_grad}
    assert all(owner in ("Adam", "Muon") for owner in owners.values()), {n: o for n, o in owners.items() if o not in ("Adam", "Muon")}
    assert owners["smear_gate"] == owners["logit_rescale"] == owners["embed_proj.weight"] == "Adam"


def test_parallel_blocks_give_attention_and_mlp_the_same_normalised_input():
    model = perturbed(model_of(num_layers=3, parallel_last=2))
    assert [b.parallel for b in model.blocks] == [False, True, True]
    block, x, x0 = model.blocks[2], torch.randn(2, 16, 64), torch.randn(2, 16, 64)
    with torch.no_grad():
        mixed = block.resid_mix[0] * x + block.resid_mix[1] * x0
        normed = rms_norm(mixed)
        expected = mixed + block.attn_scale * block.attn(normed) + block.mlp_scale * block.mlp(normed)
        assert torch.allclose(block(x, x0), expected, atol=1e-6)


@pytest.mark.parametrize("training", [True, False], ids=["cpu-batched-matmul", "sdpa"])
def test_xsa_output_is_orthogonal_to_each_tokens_own_value(training):
    model = perturbed(model_of(num_heads=4, num_kv_heads=2, xsa_last=1))
    assert [b.attn.xsa for b in model.blocks] == [False, True]
    seen = {}
    for i, block in enumerate(model.blocks):
        block.attn.c_v.register_forward_hook(lambda m, args, out, i=i: seen.__setitem__(("v", i), out))
        block.attn.proj.register_forward_pre_hook(lambda m, args, i=i: seen.__setitem__(("y", i), args[0]))
    x, y = real_batch()
    with torch.set_grad_enabled(training):
        model(x, y)
    along = []
    for i in (0, 1):
        v = seen[("v", i)].reshape(2, 64, 2, 16).repeat_interleave(2, dim=2)  # query head h reads KV head h // 2
        out = seen[("y", i)].reshape(2, 64, 4, 16)
        along.append(((out * F.normalize(v, dim=-1)).sum(-1).abs() / out.norm(dim=-1).max()).max())
    assert along[1] < 1e-5 and along[0] > 0.1  # block 0 (no XSA) keeps a part along its own value (all of it at t = 0)


def test_smear_gate_mixes_the_previous_token_but_never_across_a_document_start():
    model = perturbed(model_of(smear_gate=True))
    x, _ = real_batch(rows=1)
    other, _ = real_batch(rows=1, skip=5000)
    start = 40
    x[0, start] = model.cfg.bos_id
    changed = x.clone()
    changed[0, :start] = other[0, :start]  # another document before the BOS
    with torch.no_grad():
        x0, x0_changed = model.embed_input(x), model.embed_input(changed)
        plain = rms_norm(model.embed(x))
        gate = torch.sigmoid(model.smear_gate)
    assert torch.equal(x0[:, start:], x0_changed[:, start:]) and not torch.allclose(x0[:, 1:start], x0_changed[:, 1:start])
    assert torch.equal(x0[:, [0, start]], plain[:, [0, start]])  # none at position 0 and at BOS
    assert torch.allclose(x0[0, 1], torch.lerp(plain[0, 1], plain[0, 0], gate))
    assert torch.equal(torch.sigmoid(model_of(smear_gate=True).smear_gate), torch.full((64,), 0.5))
    assert optimizer_of(model, model.smear_gate) in ("none", "Adam")  # never Muon; see the report on optim.py


@pytest.mark.parametrize("slope", [0.0, 0.5])
def test_mlp_activation_is_leaky_relu_squared_and_slope_zero_is_relu_squared(slope):
    mlp = perturbed(model_of(mlp_leaky_slope=slope)).blocks[0].mlp
    x = torch.randn(2, 8, 64, requires_grad=True)
    hidden = mlp.fc(x)
    expected = mlp.proj(torch.where(hidden > 0, hidden, slope * hidden).square())
    out = mlp(x)  # in training: slope 0 takes the fused relu^2
    assert torch.allclose(out, expected, atol=1e-6)
    weights = torch.randn_like(out)
    assert torch.allclose(*(torch.autograd.grad((o * weights).sum(), x)[0] for o in (out, expected)), atol=1e-6)


def test_partial_rotary_rotates_only_the_first_dims_of_each_head():
    cfg = small_config(model=dict(rotary_fraction=0.25)).model  # head dim 32: 8 rotated
    assert cfg.rotary_dims() == 8 and small_config().model.rotary_dims() == 32
    cos, sin = GPT(cfg).blocks[0].attn.rotary(16, torch.device("cpu"), torch.float32)
    assert cos.shape[-1] == 4
    x = torch.randn(2, 2, 16, 32, requires_grad=True)
    weights = torch.randn(2, 2, 16, 32)
    fused = apply_rotary(x, cos, sin)  # training: the fused rotation of the first 8 dims
    (grad_fused,) = torch.autograd.grad((fused * weights).sum(), x)
    with fused_ops(False):
        plain = apply_rotary(x, cos, sin)
    (grad_plain,) = torch.autograd.grad((plain * weights).sum(), x)
    assert torch.equal(plain[..., 8:], x[..., 8:]) and not torch.allclose(plain[..., :8], x[..., :8])
    assert torch.allclose(fused, plain, atol=1e-6) and torch.allclose(grad_fused, grad_plain, atol=1e-6)


def test_ln_scale_shrinks_block_i_normalised_inputs_by_one_over_sqrt_i_plus_one():
    model = perturbed(model_of(num_layers=3, ln_scale=True))
    inputs = {}
    for i, block in enumerate(model.blocks):
        for kind in ("attn", "mlp"):
            getattr(block, kind).register_forward_pre_hook(lambda m, args, key=(kind, i): inputs.__setitem__(key, args[0]))
    x, y = real_batch()
    with torch.no_grad():
        model(x, y)
    assert len(inputs) == 6
    for (_, i), t in inputs.items():
        rms = t.pow(2).mean(-1).sqrt()
        assert torch.allclose(rms, torch.full_like(rms, (i + 1) ** -0.5), rtol=1e-4)


@pytest.mark.parametrize("kind, width", [("full", 64), ("sparse", 12)])
def test_attention_gate_starts_as_the_identity_and_trains_with_adam_in_fp32(kind, width):
    base = perturbed(model_of())
    gated = model_of(attn_gate=kind)
    missing, unexpected = gated.load_state_dict(base.state_dict(), strict=False)
    assert sorted(missing) == ["blocks.0.attn.attn_gate", "blocks.1.attn.attn_gate"] and not unexpected
    gate = gated.blocks[0].attn.attn_gate
    assert gate.shape == (2, width) and is_control_tensor("blocks.0.attn.attn_gate")
    x, y = real_batch()
    with torch.no_grad():
        assert torch.equal(gated(x, y), base(x, y))
    loss = gated(x, y)
    assert torch.equal(loss, base(x, y))
    loss.backward()
    assert gate.grad.abs().sum() > 0 and optimizer_of(gated, gate) == "Adam"


def test_logit_rescale_starts_at_one_and_scales_each_sign_apart():
    base = perturbed(model_of())
    model = model_of(logit_rescale=True)
    model.load_state_dict(base.state_dict(), strict=False)
    x, y = real_batch()
    with torch.no_grad():
        assert torch.equal(model.logits(x), base.logits(x)) and torch.equal(model(x, y), base(x, y))
    loss = model(x, y)  # training: the fused loss (which has no rescale) is bypassed
    assert torch.allclose(loss, base(x, y), atol=1e-5)
    loss.backward()
    assert (model.logit_rescale.grad != 0).all() and optimizer_of(model, model.logit_rescale) in ("none", "Adam")
    with torch.no_grad():
        model.logit_rescale.copy_(torch.tensor([2.0, 0.5]))
        z = base.projection(x)
        assert torch.allclose(model.logits(x), 30 * torch.tanh(torch.where(z > 0, 2 * z, 0.5 * z) / 30), atol=1e-5)


def test_loop_deltas_start_at_zero_and_an_unroll_beyond_training_reuses_the_last():
    base = perturbed(model_of(**LOOP))
    model = model_of(loop_lora_rank=2, **LOOP)
    missing, _ = model.load_state_dict(base.state_dict(), strict=False)
    assert len(missing) == 6 * 2 * 2 and all(n.startswith("blocks.1.") for n in missing)  # 6 matrices x (A, B) x 2 repeats
    assert model.state_dict()["blocks.1.mlp.fc.lora_a.0.weight"].shape == (2, 64)
    x, y = real_batch()
    with torch.no_grad():
        for repeats in (1, 2, 3):
            assert torch.equal(model(x, y, repeats=repeats), base(x, y, repeats=repeats))
    assert torch.equal(model(x, y), base(x, y))  # the training path too
    perturbed(model)
    calls = []
    for r, b in enumerate(model.blocks[1].mlp.fc.lora_b):
        b.register_forward_pre_hook(lambda m, args, r=r: calls.append(r))
    with torch.no_grad():
        assert math.isfinite(model(x, y, repeats=3).item())
    assert calls == [0, 1, 1]


def test_boundary_norm_renormalises_the_residual_between_repeats():
    model = perturbed(model_of(**dict(LOOP, loop_repeats=3), loop_boundary_norm=True))
    seen = []
    model.blocks[1].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    x, y = real_batch()
    with torch.no_grad():
        model(x, y)
    rms = [t.pow(2).mean(-1).sqrt() for t in seen]
    assert len(rms) == 3 and not torch.allclose(rms[0], torch.ones_like(rms[0]), rtol=1e-2)
    assert all(torch.allclose(r, torch.ones_like(r), rtol=1e-4) for r in rms[1:])


def test_factored_embedding_is_tied_through_one_projection_and_calibrates():
    model = perturbed(model_of(embed_rank=16))
    state = model.state_dict()
    assert state["tok_emb.weight"].shape == (1024, 16) and state["embed_proj.weight"].shape == (64, 16)
    x, _ = real_batch()
    with torch.no_grad():
        assert torch.equal(model.embed_input(x), rms_norm(model.embed_proj(model.embed(x))))
        hidden = model.projection_input(x)  # the final state mapped down to the embedding's width
        assert hidden.shape == (128, 16) and torch.equal(model.projection(x), F.linear(hidden, model.tok_emb.weight))
    hessians, rows = collect_hessians(model, calibration_batches(TRAIN_PATTERN, 1024, 64, 1024))
    assert hessians["tok_emb.weight"].shape == hessians["embed_proj.weight"].shape == (16, 16)
    assert rows["tok_emb.weight"] == rows["embed_proj.weight"] == 1024
    assert {u.name for u in make_units(state, "layer") if u.embedding} == {"tok_emb.weight", "embed_proj.weight"}


def test_the_byte_predictor_and_the_allocation_units_see_every_new_tensor():
    cfg = small_config(model=ALL_ON).model
    state = GPT(cfg).state_dict()
    infos = tensor_infos(cfg)
    assert [(i.name, i.shape) for i in infos] == [(n, tuple(t.shape)) for n, t in state.items()]
    roles = {i.name: i.role for i in infos}
    assert roles["embed_proj.weight"] == roles["tok_emb.weight"] == "embedding"
    assert roles["smear_gate"] == roles["logit_rescale"] == roles["blocks.2.attn.attn_gate"] == "control"
    assert roles["blocks.1.mlp.fc.lora_b.1.weight"] == roles["blocks.1.attn.c_q.lora_a.0.weight"] == "matrix"
    matrices = {n for n, t in state.items() if t.ndim == 2 and not is_control_tensor(n)}
    for granularity in ("layer", "kind", "tensor"):
        assert {n for u in make_units(state, granularity) for n in u.tensors} == matrices, granularity


def test_fisher_sensitivities_reach_every_unit_of_a_model_with_every_module_on():
    # The LoRA deltas of a shared block, the factored embedding and the gates all get gradients through one
    # backward pass (the shared block's over both repeats), so no unit is left at 0 or NaN.
    from search.allocation.options import unit_options
    from search.allocation.sensitivity import heldout_tokens, measure_sensitivities

    model = perturbed(model_of(**ALL_ON))
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    units = make_units(state, "layer")
    options = {u.name: unit_options(state, u, [3, 8], [8.0]) for u in units}
    tokens = heldout_tokens(TRAIN_PATTERN, 1024, 1024, 64)
    found = measure_sensitivities(model, state, units, options, tokens, 64, 2, True, torch.device("cpu"), method="fisher")
    assert set(found) == {u.name for u in units} and all(math.isfinite(v) and v > 0 for v in found.values()), found
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_every_module_traces_as_one_graph_and_scores_in_full_precision():
    model = perturbed(model_of(**ALL_ON))
    x, y = real_batch()
    compiled = torch.compile(model, fullgraph=True, dynamic=False, backend="aot_eager")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = compiled(x, y)
        eager = model(x, y)
    loss.backward()
    assert abs(loss.item() - eager.item()) < 1e-2 and model.blocks[1].attn.c_q.lora_b[1].weight.grad is not None
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = model(x, y, repeats=3).item()
    with torch.no_grad():
        fp32 = full_precision(model)(x, y, repeats=3).item()
    assert abs(bf16 - fp32) < 0.05


def test_every_module_on_trains_with_qat_calibrates_exports_and_scores_as_in_memory():
    config = small_config(model=ALL_ON, train=dict(iterations=3, qat_fraction=0.5, qat_embed_bits=6),
                          quant=dict(quantizer={"*": "gptq"}, calib_tokens=2048), eval=dict(repeats=3, stride=32))
    model, result = train_model(config, TRAIN_PATTERN, CPU)
    assert result.steps == 3 and math.isfinite(result.final_train_loss)
    blob, _, stored, seconds = export_trained(model, config, TRAIN_PATTERN, CPU.device)
    assert seconds > 0 and {e.name: e.quantizer for e in stored}["embed_proj.weight"] == "gptq"
    kinds = {e.name: e.kind for e in stored}
    assert kinds["smear_gate"] == kinds["logit_rescale"] == kinds["blocks.0.attn.attn_gate"] == "float32"
    loaded, _, eval_cfg = load_model(blob, CPU.device)
    in_memory = GPT(config.model)
    in_memory.load_state_dict(dequantize_state_dict(stored))
    scored = [score(m, e, VAL_PATTERN, TOKENIZER, CPU, limit=4096) for m, e in ((loaded, eval_cfg), (in_memory, config.resolved_eval()))]
    assert scored[0].bpb == scored[1].bpb and math.isfinite(scored[0].bpb) and eval_cfg.repeats == 3


def test_the_exported_script_with_every_module_trains_under_ddp(tmp_path):
    train = dict(iterations=3, ema_decay=0.9, lr_floor=0.1, muon_ns="polar_express", seq_len_stages=[32])
    config = small_config(model=ALL_ON, train=train)
    script = assemble_script(config_to_dict(config))
    assert not re.search(r"^\s*(from|import) (pgolf|search|space|objectives)\b", script, re.M)
    compile(script, "train_gpt.py", "exec")
    path = tmp_path / "train_gpt.py"
    path.write_text(script)
    env = dict(os.environ, DATA_PATH=SHARDS, TOKENIZER_PATH=TOKENIZER, DEVICE="cpu", OMP_NUM_THREADS="1", PYTHONPATH="")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(path)],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    scores = re.findall(r"final_roundtrip_exact val_loss:\S+ val_bpb:(\S+)", done.stdout)
    assert len(scores) == 1 and math.isfinite(float(scores[0]))


def test_a_trial_with_every_module_and_training_option_exports_and_verifies(tmp_path):
    space = os.path.join(os.path.dirname(__file__), "spaces", "modules.toml")
    results, out = tmp_path / "results", tmp_path / "submission"
    for args in (("run", "--space", space, "--study", "all", "--trials", "1", "--results", str(results)),
                 ("export", "all", "--trial", "0", "--out", str(out), "--results", str(results)),
                 ("verify", str(out))):
        done = run_cli("search.cli", *args)
        assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-2000:]
    script = (out / "train_gpt.py").read_text()
    assert "smear_gate" in script and "polar_express" in script
    assert not re.search(r"^\s*(from|import) (pgolf|search|space|objectives)\b", script, re.M)


def test_a_model_file_records_a_module_key_only_when_it_is_on():
    names = [f.name for f in dataclasses.fields(ModelConfig)]
    assert MODULE_KEYS == tuple(names[names.index("tied_embed_init_std") + 1:])  # every module key is listed
    assert list(model_settings(ModelConfig())) == names[: len(names) - len(MODULE_KEYS)]  # files as before the modules
    assert model_settings(ModelConfig(xsa_last=2, attn_gate="full"))["attn_gate"] == "full"


@pytest.mark.parametrize("model, pattern", [
    (dict(parallel_last=3), r"model\.parallel_last must be in \[0, model\.num_layers 2\], got 3"),
    (dict(xsa_last=-1), r"model\.xsa_last must be in \[0, model\.num_layers 2\], got -1"),
    (dict(smear_gate=1), r"model\.smear_gate must be true or false, got 1"),
    (dict(bos_id=1024), r"model\.bos_id must be a token id below model\.vocab_size, got 1024"),
    (dict(mlp_leaky_slope=-0.5), r"model\.mlp_leaky_slope must be in \[0, 1\], got -0\.5"),
    (dict(rotary_fraction=0.01), r"model\.rotary_fraction 0\.01 must rotate an even number \(>= 2\) of the head's dims, got 0"),
    (dict(rotary_fraction=0.09375), r"model\.rotary_fraction 0\.09375 must rotate an even number .*, got 3"),
    (dict(ln_scale="yes"), r"model\.ln_scale must be true or false, got 'yes'"),
    (dict(attn_gate="half"), r"model\.attn_gate must be off, full or sparse, got 'half'"),
    (dict(attn_gate="sparse", attn_gate_window=65), r"model\.attn_gate_window must be in \[1, model\.model_dim\], got 65"),
    (dict(logit_rescale=0), r"model\.logit_rescale must be true or false, got 0"),
    (dict(loop_lora_rank=2), r"model\.loop_lora_rank = 2 needs a shared segment \(model\.loop_len > 0\)"),
    (dict(loop_lora_rank=-1, **LOOP), r"model\.loop_lora_rank must be non-negative, got -1"),
    (dict(loop_boundary_norm=True), r"model\.loop_boundary_norm = True needs a shared segment"),
    (dict(embed_rank=64), r"model\.embed_rank must be in \[0, model\.model_dim\), got 64"),
    (dict(embed_rank=16, tie_embeddings=False), r"model\.embed_rank = 16 needs model\.tie_embeddings = true"),
])
def test_bad_module_settings_are_refused_in_one_line_naming_the_key(model, pattern):
    with pytest.raises(ConfigError, match=pattern) as info:
        small_config(model=model)
    assert "\n" not in str(info.value)
