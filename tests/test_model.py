import torch

from pgolf.config import ModelConfig
from pgolf.model import GPT, causal_attention, layer_plan

from conftest import DATA


def test_official_checkpoint_loads_one_to_one():
    state = torch.load(f"{DATA}/official_tiny/final_model.pt", weights_only=True)
    model = GPT(ModelConfig(num_layers=4, model_dim=256, num_heads=4, num_kv_heads=2, mlp_mult=2.0))
    mine = model.state_dict()
    assert list(mine) == list(state)
    assert all(mine[k].shape == state[k].shape and mine[k].dtype == state[k].dtype for k in state)
    model.load_state_dict(state, strict=True)


def test_layer_plan_without_and_with_a_shared_segment():
    assert layer_plan(9, 0, 0, 1) == ([0, 1, 2, 3], [], [4, 5, 6, 7, 8])
    encoder, middle, decoder = layer_plan(6, 2, 2, 3)
    assert encoder == [0, 1] and middle == [2, 3] * 3 and decoder == [4, 5]


def test_eval_unroll_count_changes_compute_not_parameters():
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=64, num_layers=4, model_dim=32, num_heads=2, num_kv_heads=1,
                            loop_start=1, loop_len=2, loop_repeats=2))
    for p in model.parameters():  # zero-initialised projections would make every unroll identical
        torch.nn.init.normal_(p, std=0.1)
    x = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        losses = [model(x, x, repeats=r).item() for r in (1, 2, 3)]
    assert len(set(losses)) == 3
    assert model.skip_weights.shape == (1, 32)


def test_cpu_training_attention_matches_sdpa():
    torch.manual_seed(0)
    q = torch.randn(2, 4, 32, 16, requires_grad=True)
    k = torch.randn(2, 2, 32, 16, requires_grad=True)
    v = torch.randn(2, 2, 32, 16, requires_grad=True)
    fast = causal_attention(q, k, v)
    reference = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    assert torch.allclose(fast, reference, atol=1e-5)
    fast.sum().backward()
    grad_fast = q.grad.clone()
    q.grad = None
    reference.sum().backward()
    assert torch.allclose(grad_fast, q.grad, atol=1e-5)


def test_rms_norm_is_bitwise_the_library_one_in_evaluation():
    from pgolf.model import rms_norm

    torch.manual_seed(0)
    for dtype in (torch.bfloat16, torch.float32):
        for x in (torch.randn(4, 64, 96) * 3, torch.randn(2, 64, 4, 32).transpose(1, 2)):
            x = x.to(dtype)
            with torch.inference_mode():
                assert torch.equal(rms_norm(x), torch.nn.functional.rms_norm(x, (x.size(-1),)))



def test_a_tensor_role_is_decided_from_its_name_alone():
    from pgolf.model import Role, tensor_role

    assert tensor_role("blocks.3.attn.c_q.weight") == Role("block", 3, "attn")
    assert tensor_role("blocks.1.mlp.fc.lora_b.0.weight") == Role("block", 1, "mlp")  # a per-repeat delta
    assert tensor_role("blocks.2.attn.q_gain") == Role("gain", 2, "attn")
    assert tensor_role("blocks.0.resid_mix") == Role("gain", 0, "")
    assert tensor_role("skip_weights") == Role("gain") and tensor_role("smear_gate") == Role("gain")
    assert tensor_role("tok_emb.weight") == tensor_role("lm_head.weight") == tensor_role("embed_proj.weight") == Role("embedding")
    assert tensor_role("bigram.weight") == Role("other")  # a top-level matrix in no block
